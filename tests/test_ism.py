"""ISM_predict: the spec's worked examples, equality with a naive reference ISM, input forms,
model handling, validation and side effects.

Tolerance: float32 paths must match the naive reference (every mutant predicted separately) to
1e-5 of the output scale (max |reference|), the same bound as the incremental engine.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import basewise
from basewise.ism import _DF_WARNING

from _grelu_standins import make_test_model_f  # noqa: E402  (tests/ is on sys.path)

RTOL_SCALE = 1e-5


# ----------------------------------------------------------------------------- models
def plain_f():
    """The spec's test model f as a plain module: w = [4, -2, 0, 0], mean over positions."""
    conv = torch.nn.Conv1d(4, 1, 1, bias=False)
    conv.weight.data.copy_(torch.tensor([4.0, -2.0, 0.0, 0.0]).view(1, 4, 1))
    return torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool1d(1))


@pytest.fixture(params=["lightning", "plain"])
def f(request):
    return make_test_model_f() if request.param == "lightning" else plain_f()


class RandomCNN(torch.nn.Module):
    """A conv trunk with dilation, pooling and a residual block; profile output (B, T, L_out)."""

    def __init__(self, seed, tasks=2, profile=True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        k1 = 2 * int(torch.randint(1, 5, (1,), generator=g)) + 1
        self.stem = torch.nn.Conv1d(4, 8, k1, padding="same")
        self.bn = torch.nn.BatchNorm1d(8)
        self.dil = torch.nn.Conv1d(8, 8, 3, dilation=2, padding=2)
        self.pool = torch.nn.MaxPool1d(2)
        self.head = torch.nn.Conv1d(8, tasks, 1)
        self.profile = profile
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            self.bn.running_mean.copy_(torch.randn(8, generator=g) * 0.1)
            self.bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = h + torch.relu(self.dil(h))
        y = self.head(self.pool(h))
        return y if self.profile else y.mean(-1)


class ConvTransformer(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv1d(4, 16, 5, padding=2)
        layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.tf = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, x):
        h = self.tf(torch.relu(self.conv(x)).transpose(1, 2))
        return self.out(h).transpose(1, 2)  # (B, 3, L)


def naive_ism(model, onehot, start, end, transform=None):
    """Every mutant (including the reference base) predicted one at a time: (B, P, 4, T, L_out)."""
    model.eval()
    out = []
    with torch.no_grad():
        for b in range(onehot.shape[0]):
            rows = []
            for p in range(start, end):
                per_base = []
                for a in range(4):
                    x = onehot[b : b + 1].clone()
                    x[0, :, p] = 0
                    x[0, a, p] = 1
                    y = model(x)
                    y = transform(y) if transform is not None else y
                    if y.ndim == 2:
                        y = y[..., None]
                    per_base.append(y[0])
                rows.append(torch.stack(per_base))
            out.append(torch.stack(rows))
    return torch.stack(out).numpy()


def random_seqs(rng, n, length, n_frac=0.0):
    letters = np.array(list("ACGT"))
    arr = letters[rng.integers(0, 4, size=(n, length))]
    arr[rng.random((n, length)) < n_frac] = "N"
    return ["".join(r) for r in arr]


def assert_close_scaled(actual, expected, tol=RTOL_SCALE):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale)


# ----------------------------------------------------------------------------- worked examples
def test_worked_example_aa(f):
    df = basewise.ISM_predict("AA", f)
    assert isinstance(df, pd.DataFrame)
    assert list(df.index) == ["A", "C", "G", "T"] and list(df.columns) == ["A", "A"]
    assert all(dt == np.float32 for dt in df.dtypes)
    np.testing.assert_array_equal(df.values, [[4, 4], [1, 1], [2, 2], [2, 2]])
    df = basewise.ISM_predict("AA", f, compare_func="log2FC")
    np.testing.assert_array_equal(df.values, [[0, 0], [-2, -2], [-1, -1], [-1, -1]])


def test_worked_example_window_subtract(f):
    df = basewise.ISM_predict("ACGT", f, compare_func="subtract", start_pos=1, end_pos=3)
    assert list(df.columns) == ["C", "G"]
    np.testing.assert_allclose(df.values, [[1.5, 1.0], [0, -0.5], [0.5, 0], [0.5, 0]], atol=1e-7)


def test_worked_example_two_sequences(f):
    out = basewise.ISM_predict(["AAA", "CCC"], f, return_df=False)
    assert out.shape == (2, 3, 4, 1, 1) and out.dtype == np.float32
    for p in range(3):
        np.testing.assert_allclose(out[0, p, :, 0, 0], [4, 2, 2.6666667, 2.6666667], rtol=1e-6)
        np.testing.assert_allclose(out[1, p, :, 0, 0], [0, -2, -1.3333334, -1.3333334], rtol=1e-6)


def test_worked_example_log2fc_warning_and_inf(f):
    with pytest.warns(UserWarning) as rec:
        out = basewise.ISM_predict(["AAA", "CCC"], f, compare_func="log2FC")
    assert any(str(w.message) == _DF_WARNING for w in rec)
    # numpy's (hence gReLU's) RuntimeWarning for the -inf
    assert any(w.category is RuntimeWarning and "divide by zero encountered in log2" in str(w.message) for w in rec)
    assert "are" + " " * 17 + "supplied" in _DF_WARNING
    np.testing.assert_allclose(out[0, 1, :, 0, 0], [0, -1, -0.5849624, -0.5849624], rtol=1e-6)
    np.testing.assert_allclose(out[1, 2, :, 0, 0], [-np.inf, 0, -0.5849624, -0.5849624], rtol=1e-6)


def test_worked_example_divide_negative_zero(f):
    out = basewise.ISM_predict(["CCC"], f, compare_func="divide", return_df=False)
    v = out[0, 0, :, 0, 0]
    np.testing.assert_allclose(v, [0, 1, 0.6666667, 0.6666667], rtol=1e-6)
    assert v[0] == 0 and np.signbit(v[0])


def test_worked_example_n_at_start(f):
    df = basewise.ISM_predict("NAC", f)
    assert list(df.columns) == ["N", "A", "C"]
    np.testing.assert_allclose(df.loc["A"], [2, 0.6666667, 2.6666667], rtol=1e-6)
    np.testing.assert_allclose(df.loc["C"], [0, -1.3333334, 0.6666667], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(df.loc["G"], [0.6666667, -0.6666667, 1.3333334], rtol=1e-6)
    np.testing.assert_allclose(df.loc["T"], df.loc["G"])
    # Improvement over gReLU (IndexError there): the reference is the unmutated prediction.
    sub = basewise.ISM_predict("NAC", f, compare_func="subtract")
    np.testing.assert_allclose(sub.values, df.values - 2 / 3, rtol=1e-6, atol=1e-6)


def test_intervals_with_fasta(tmp_path, f):
    fa = tmp_path / "g.fa"
    fa.write_text(">chr1\nACGTACGTAAccGGTT\n")
    iv = pd.DataFrame({"chrom": ["chr1", "chr1"], "start": [8, 8], "end": [12, 12], "strand": ["+", "-"]})
    out = basewise.ISM_predict(iv, f, genome=str(fa), return_df=False)
    direct = basewise.ISM_predict(["AACC", "GGTT"], f, return_df=False)
    np.testing.assert_array_equal(out, direct)
    assert (tmp_path / "g.fa.fai").exists()


# ----------------------------------------------------------------------------- naive reference
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_matches_naive_random_cnn(seed, batch_size):
    rng = np.random.default_rng(seed)
    length = int(rng.integers(9, 30))
    start = int(rng.integers(0, 3))
    end = length - int(rng.integers(0, 3))
    seqs = random_seqs(rng, 3, length, n_frac=0.1)
    model = RandomCNN(seed, profile=seed % 2 == 0)
    expected = naive_ism(model, basewise.sequence.to_onehot(seqs), start, end)
    for engine in ("full", "auto"):
        out = basewise.ISM_predict(seqs, model, start_pos=start, end_pos=end, batch_size=batch_size,
                                   return_df=False, engine=engine)
        assert out.shape == expected.shape
        assert_close_scaled(out, expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_conv_transformer(seed):
    rng = np.random.default_rng(seed)
    seqs = random_seqs(rng, 2, 13, n_frac=0.1)
    model = ConvTransformer(seed)
    expected = naive_ism(model, basewise.sequence.to_onehot(seqs), 2, 11)
    model.train()
    out = basewise.ISM_predict(seqs, model, start_pos=2, end_pos=11, batch_size=7, return_df=False)
    assert_close_scaled(out, expected)
    assert model.training  # ConvTransformer was built in training mode and is restored


@pytest.mark.parametrize("compare", ["subtract", "divide", "log2FC"])
def test_compare_matches_numpy(compare):
    rng = np.random.default_rng(5)
    seqs = random_seqs(rng, 2, 11)
    model = torch.nn.Sequential(RandomCNN(3, tasks=1, profile=False), torch.nn.Softplus()).eval()
    raw = basewise.ISM_predict(seqs, model, return_df=False)
    out = basewise.ISM_predict(seqs, model, compare_func=compare, return_df=False)
    ref = np.asarray(model(basewise.sequence.to_onehot(seqs)).detach().numpy())[:, None, None, :, None]
    with np.errstate(all="ignore"):
        expected = {"subtract": raw - ref, "divide": raw / ref, "log2FC": np.log2(raw / ref)}[compare]
    np.testing.assert_allclose(out, expected.astype(np.float32), rtol=1e-6, atol=1e-7)
    called = {}

    def custom(p, r):
        called["shapes"] = (p.shape, r.shape)
        return p * 2 - r

    out = basewise.ISM_predict(seqs, model, compare_func=custom, return_df=False)
    assert called["shapes"] == (raw.shape, (2, 1, 1, 1, 1))
    np.testing.assert_allclose(out, raw * 2 - ref, rtol=1e-6)


# ----------------------------------------------------------------------------- inputs
def test_all_input_forms_identical(f):
    seq = "ACGTNACG"
    idx = basewise.sequence.to_indices(seq)
    onehot = basewise.sequence.to_onehot(seq)
    forms = [seq, seq.lower(), [seq], idx[0], idx, idx.astype(np.int64), onehot, onehot[0],
             onehot.numpy(), onehot[0].numpy().astype(np.float64)]
    results = [basewise.ISM_predict(s, f, return_df=False, start_pos=1) for s in forms]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


# ----------------------------------------------------------------------------- models
def test_lightning_standin_matches_plain_and_transform_restored():
    from _grelu_standins import StandInLightningModel

    torch.manual_seed(0)
    net = RandomCNN(4, tasks=3)
    lm = StandInLightningModel(net, activation="exp")
    caller_transform = torch.nn.Identity()
    lm.add_transform(caller_transform)
    lm.train()

    class SumTask(torch.nn.Module):
        def forward(self, y):
            return y[:, :2].sum(dim=(1, 2), keepdim=True)

    seqs = random_seqs(np.random.default_rng(1), 2, 12)
    t = SumTask()
    out_lm = basewise.ISM_predict(seqs, lm, prediction_transform=t, return_df=False)
    assert lm.training and net.training
    expected = naive_ism(torch.nn.Sequential(net), basewise.sequence.to_onehot(seqs), 0, 12,
                         transform=lambda y: t(torch.exp(y)))
    assert_close_scaled(out_lm, expected)
    assert lm.transform is caller_transform  # gReLU would have reset it
    out_plain = basewise.ISM_predict(seqs, lambda x: torch.exp(net.eval()(x)), prediction_transform=t,
                                     return_df=False)
    np.testing.assert_allclose(out_lm, out_plain, rtol=1e-6)


def test_model_restored_on_exception():
    from _grelu_standins import StandInLightningModel

    class Boom(torch.nn.Module):
        def forward(self, y):
            raise RuntimeError("boom")

    lm = StandInLightningModel(RandomCNN(0), activation="identity").train()
    before = lm.transform
    with pytest.raises(RuntimeError, match="boom"):
        basewise.ISM_predict("ACGTA", lm, prediction_transform=Boom())
    assert lm.transform is before and lm.training


def test_multi_device_sharding_on_cpu():
    seqs = random_seqs(np.random.default_rng(3), 3, 10)
    model = RandomCNN(7)
    one = basewise.ISM_predict(seqs, model, return_df=False, batch_size=5, engine="full")
    two = basewise.ISM_predict(seqs, model, devices=["cpu", torch.device("cpu")], return_df=False,
                               batch_size=5, engine="full")
    np.testing.assert_array_equal(one, two)


def test_batches_never_exceed_batch_size_and_three_p_plus_one():
    calls = []
    base = plain_f()

    def model(x):
        calls.append(x.shape[0])
        return base(x)

    seqs = ["ACGTN" * 3, "TTTTTAAAAACCCCC"]
    basewise.ISM_predict(seqs, model, batch_size=4, return_df=False, engine="full")
    assert max(calls) <= 4
    # references (one per sequence) + 3 substitutions per position, 4 at the single-N positions
    assert sum(calls) == 2 + 3 * 30 + 3


# ----------------------------------------------------------------------------- validation
class CountingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = plain_f()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize(
    "kwargs, match, exc",
    [
        (dict(start_pos=5), "start_pos", ValueError),
        (dict(start_pos=-1), "start_pos", ValueError),
        (dict(start_pos=2, end_pos=2), "end_pos", ValueError),
        (dict(end_pos=9), "end_pos", ValueError),
        (dict(compare_func="log2fc"), "compare_func", NotImplementedError),
        (dict(compare_func=3), "compare_func", ValueError),
        (dict(batch_size=0), "batch_size", ValueError),
        (dict(engine="fast"), "engine", ValueError),
        (dict(devices="tpu"), "devices", ValueError),
        (dict(progress="yes"), "progress", ValueError),
    ],
)
def test_validation_before_model_call(kwargs, match, exc):
    m = CountingModel()
    with pytest.raises(exc, match=match):
        basewise.ISM_predict("ACGTA", m, **kwargs)
    assert m.calls == 0


@pytest.mark.parametrize(
    "seqs, exc, match",
    [
        (["ACG", "ACGT"], ValueError, "equal length"),
        ("ACGX", ValueError, "not a valid DNA"),
        (np.array([0, 5], dtype=np.int8), ValueError, "index-encoded"),
        (torch.zeros(3, 5), ValueError, "one-hot"),
        (3.5, TypeError, "supported type"),
        ([1, 2], TypeError, "DNA strings"),
    ],
)
def test_bad_sequences(seqs, exc, match):
    m = CountingModel()
    with pytest.raises(exc, match=match):
        basewise.ISM_predict(seqs, m)
    assert m.calls == 0


def test_unequal_lengths_is_also_assertion_error():
    with pytest.raises(AssertionError):
        basewise.ISM_predict(["AC", "A"], plain_f())


def test_interval_errors(tmp_path):
    fa = tmp_path / "g.fa"
    fa.write_text(">chr1\nACGTACGT\n")
    m = CountingModel()
    with pytest.raises(ValueError, match="chromosome"):
        basewise.ISM_predict(pd.DataFrame({"chrom": ["chr9"], "start": [0], "end": [4]}), m, genome=str(fa))
    with pytest.raises(ValueError, match="outside"):
        basewise.ISM_predict(pd.DataFrame({"chrom": ["chr1"], "start": [6], "end": [12]}), m, genome=str(fa))
    with pytest.raises(AssertionError, match="genome"):
        basewise.ISM_predict(pd.DataFrame({"chrom": ["chr1"], "start": [0], "end": [4]}), m)
    with pytest.raises(ValueError, match="genomic intervals"):
        basewise.ISM_predict(pd.DataFrame({"c": ["chr1"], "start": [0], "end": [4]}), m, genome=str(fa))
    assert m.calls == 0


# ----------------------------------------------------------------------------- side effects
def test_no_global_side_effects(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    precision = torch.get_float32_matmul_precision()
    threads = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        basewise.ISM_predict("ACGTACGT", plain_f(), compare_func="subtract", progress=False)
    assert torch.get_float32_matmul_precision() == precision
    assert torch.get_num_threads() == threads
    assert list(tmp_path.iterdir()) == []
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_goes_to_stderr(capsys):
    basewise.ISM_predict("ACGTACGT", plain_f(), progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ISM" in captured.err


def test_score_module_is_drop_in():
    import inspect

    import basewise.score as score

    params = list(inspect.signature(score.ISM_predict).parameters.values())
    names = [p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert names == ["seqs", "model", "genome", "prediction_transform", "start_pos", "end_pos",
                     "compare_func", "devices", "num_workers", "batch_size", "return_df"]
    defaults = [p.default for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert defaults[2:] == [None, None, 0, None, None, "cpu", 1, 64, True]


# ----------------------------------------------------------------------------- against gReLU
try:  # optional: side-by-side with gReLU itself (tests/test_against_grelu.py has the full set)
    import grelu.interpret.score as grelu_score
except ImportError:
    grelu_score = None


@pytest.mark.skipif(grelu_score is None, reason="grelu not installed")
def test_against_grelu():  # pragma: no cover - needs grelu
    from grelu.lightning import LightningModel

    lm = LightningModel(model_params={"model_type": "ConvModel", "n_tasks": 1, "n_conv": 2},
                        train_params={"task": "regression", "loss": "poisson"})
    seqs = random_seqs(np.random.default_rng(0), 2, 60)
    ours = basewise.ISM_predict(seqs, lm, compare_func="log2FC", return_df=False)
    precision = torch.get_float32_matmul_precision()
    try:
        theirs = grelu_score.ISM_predict(seqs, lm, compare_func="log2FC", return_df=False)
    finally:
        torch.set_float32_matmul_precision(precision)  # gReLU sets "medium" for the whole process
    assert_close_scaled(ours, theirs, tol=1e-5)


def test_torch_export_program_module(tmp_path):
    model = RandomCNN(2).eval()
    x = torch.zeros(2, 4, 12)  # batch 2: a batch of 1 would specialise the exported shape
    path = tmp_path / "m.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}}), str(path))
    loaded = torch.export.load(str(path)).module()
    seqs = random_seqs(np.random.default_rng(0), 1, 12)
    expected = basewise.ISM_predict(seqs, model, return_df=False, engine="full")
    for engine in ("full", "auto"):
        out = basewise.ISM_predict(seqs, loaded, return_df=False, engine=engine)
        assert_close_scaled(out, expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_engine_on_large_jobs_matches_naive(seed, monkeypatch):
    """engine="auto" captures the model when full recompute is estimated to be slow (forced here)."""
    import basewise.ism as ism_module

    monkeypatch.setattr(ism_module, "_estimated_full_seconds", lambda *a: 1e9)
    rng = np.random.default_rng(seed)
    seqs = random_seqs(rng, 2, 40, n_frac=0.05)
    model = RandomCNN(seed + 10)
    expected = naive_ism(model, basewise.sequence.to_onehot(seqs), 0, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the spot check must not find a disagreement
        out = basewise.ISM_predict(seqs, model, return_df=False, batch_size=17)
    assert_close_scaled(out, expected)
    plan = basewise.plan_ism(model, 40, cached_only=True)
    assert plan.supported  # the auto run captured and cached a plan


@pytest.mark.parametrize("engine", ["full", "incremental", "auto"])
def test_float64_model(engine):
    """A float64 model runs in float64 (the native mutate op writes float32 one-hot, converted
    exactly); the result is float32 as gReLU's, equal to a float64 naive ISM to float32 rounding."""
    torch.manual_seed(8)
    net = torch.nn.Sequential(torch.nn.Conv1d(4, 6, 5, padding=2), torch.nn.ReLU(),
                              torch.nn.Conv1d(6, 2, 3, padding=1), torch.nn.AdaptiveAvgPool1d(1)).double().eval()
    seqs = random_seqs(np.random.default_rng(8), 2, 33, n_frac=0.1)
    out = basewise.ISM_predict(seqs, net, return_df=False, engine=engine, batch_size=7)
    assert out.dtype == np.float32 and out.shape == (2, 33, 4, 2, 1)
    want = naive_ism(net, basewise.to_onehot(seqs).double(), 0, 33)
    assert np.abs(out.astype(np.float64) - want).max() <= 1e-6 * np.abs(want).max()
    assert next(net.parameters()).dtype == torch.float64
