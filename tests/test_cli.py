"""Tests of the ``basewise`` command line: demo, ism, attribute, modisco, resume and errors."""

import io
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

import basewise.ism  # noqa: E402
from basewise import ISM_predict  # noqa: E402
from basewise.cli import main  # noqa: E402
from basewise.results import open_results  # noqa: E402
from basewise.sequence import intervals_to_strings, reverse_complement  # noqa: E402
from basewise.transforms import Aggregate  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # TorchScript stays supported

L = 24
MODEL_SRC = textwrap.dedent("""
    import os, signal, torch

    class Tiny(torch.nn.Module):
        # (B, 4, L) -> (B, 2, L): two tasks, one output bin per position
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv1d(4, 3, 5, padding=2)
            self.act = torch.nn.ReLU()  # a module, so deepshap's rescale rule applies
            self.head = torch.nn.Conv1d(3, 2, 1)

        def forward(self, x):
            return self.head(self.act(self.conv(x)))

    def build():
        return Tiny()

    class Stopping(Tiny):
        # sends itself SIGTERM (a batch scheduler stopping the job) when it is asked to predict
        # the unmutated sequence BASEWISE_TEST_STOP_ON, i.e. during that sequence's chunk
        def forward(self, x):
            stop = os.environ.get("BASEWISE_TEST_STOP_ON", "")
            if stop and x.shape[-1] == len(stop):
                target = torch.eye(4)[["ACGT".index(c) for c in stop]].T.to(x.dtype)  # (4, L)
                if bool((x == target).all(dim=2).all(dim=1).any()):
                    os.kill(os.getpid(), signal.SIGTERM)
            return super().forward(x)

    def build_stopping():
        return Stopping()

    def not_a_model():
        return 42
""")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "tinymodels.py").write_text(MODEL_SRC)
    sys.path.insert(0, str(d))
    try:
        import tinymodels  # noqa: F401
    finally:
        sys.path.remove(str(d))
    import importlib.util

    spec = importlib.util.spec_from_file_location("tinymodels_for_tests", d / "tinymodels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.build().eval()
    torch.jit.script(model).save(str(d / "model.ts"))
    ep = torch.export.export(model, (torch.zeros(2, 4, L),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(d / "model.pt2"))
    rng = np.random.default_rng(0)
    chroms = {"chr1": 300, "chr2": 200}
    with open(d / "genome.fa", "w") as fh:
        for c, n in chroms.items():
            s = "".join(rng.choice(list("ACGT"), n))
            s = s[:40] + "NN" + s[42:]
            fh.write(f">{c}\n" + "\n".join(s[i:i + 60] for i in range(0, n, 60)) + "\n")
    bed = []
    for i in range(7):
        c = "chr1" if i % 2 else "chr2"
        s = int(rng.integers(0, 150))
        bed.append(f"{c}\t{s}\t{s + L}\tpeak{i}\t0\t{'+-'[i % 2]}")
    (d / "regions.bed").write_text("track name=x\n# comment\n" + "\n".join(bed) + "\n")
    seqs = ["".join(rng.choice(list("ACGT"), L)) for _ in range(5)]
    (d / "seqs.fa").write_text("".join(f">s{i} description\n{s}\n" for i, s in enumerate(seqs)))
    return {"dir": d, "model": model, "seqs": seqs, "mod": mod}


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def ism_args(files, out, *extra):
    d = files["dir"]
    return ["ism", "-m", d / "model.ts", "--fasta", d / "seqs.fa", "-o", out, "-q", "--engine", "full", *extra]


def test_ism_fasta_with_transform_equals_ISM_predict(files, tmp_path, capsys):
    out = tmp_path / "ism.h5"
    rc, stdout, err = run(ism_args(files, out, "--chunk-size", "2", "--tasks", "1", "--positions", "4:20",
                                   "--length-aggfunc", "mean", "--compare", "subtract", "--start-pos", "3",
                                   "--end-pos", "21"), capsys)
    assert rc == 0, err
    assert "5 regions" in stdout and str(out) in stdout
    agg = Aggregate(tasks=[1], positions=list(range(4, 20)), length_aggfunc="mean")
    want = ISM_predict(files["seqs"], files["model"], prediction_transform=agg, start_pos=3, end_pos=21,
                       compare_func="subtract", return_df=False, progress=False)
    with open_results(out) as r:
        assert r.complete and r.kind == "ism"
        assert r.regions.name.tolist() == [f"s{i}" for i in range(5)]
        assert r.regions.end.tolist() == [L] * 5 and r.regions.start.tolist() == [0] * 5
        assert [r.sequence(i) for i in range(5)] == files["seqs"]
        got = r.scores[()]
        assert got.shape == (5, 18, 4, 1, 1) and got.dtype == np.float32
        # batch composition differs (chunks of 2 vs all 5): float32 rounding of outputs of size ~0.1-1
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        assert r.arguments["transform"]["tasks"] == [1] and r.arguments["compare_func"] == "subtract"
        info = r.info
        assert info["command_line"].startswith("basewise ism -m ") and info["inputs"]["fasta"].endswith("seqs.fa")
        df = r.ism_dataframe(2)
        assert list(df.columns) == list(files["seqs"][2][3:21])


def test_ism_bed_strand_and_width(files, tmp_path, capsys):
    d = files["dir"]
    out = tmp_path / "bed.h5"
    rc, _, err = run(["ism", "-m", d / "model.ts", "--bed", d / "regions.bed", "--genome", d / "genome.fa",
                      "--width", 16, "-o", out, "-q", "--length-aggfunc", "sum", "--task-aggfunc", "max"], capsys)
    assert rc == 0, err
    with open_results(out) as r:
        regions = r.regions
        assert (regions.end - regions.start).tolist() == [16] * 7
        assert regions.strand.tolist() == ["+", "-"] * 3 + ["+"]
        # --width keeps the centre of each BED interval
        for line, (_, row) in zip((d / "regions.bed").read_text().splitlines()[2:], regions.iterrows()):
            c, s, e = line.split("\t")[:3]
            assert row.chrom == c and row.start == (int(s) + int(e)) // 2 - 8
        seqs = intervals_to_strings(regions[["chrom", "start", "end", "strand"]], str(d / "genome.fa"))
        assert [r.sequence(i) for i in range(7)] == seqs
        plus = intervals_to_strings(regions[["chrom", "start", "end"]], str(d / "genome.fa"))
        assert seqs[1] == reverse_complement(plus[1]) != plus[1]
        agg = Aggregate(length_aggfunc="sum", task_aggfunc="max")
        want = ISM_predict(seqs, files["model"], prediction_transform=agg, return_df=False, progress=False,
                           engine="full")
        np.testing.assert_allclose(r.scores[()], want, rtol=0, atol=1e-5)  # outputs ~10


@pytest.mark.parametrize("spec", ["model.pt2", "tinymodels.py:build", "module"])
def test_other_model_forms_give_the_same_scores(files, tmp_path, capsys, spec, monkeypatch):
    d = files["dir"]
    if spec == "module":
        monkeypatch.syspath_prepend(str(d))
        model_arg = "tinymodels:build"
    else:
        model_arg = str(d / spec.split(":")[0]) + (":" + spec.split(":")[1] if ":" in spec else "")
    args_ts = ism_args(files, tmp_path / "ts.h5", "--length-aggfunc", "mean", "--task-aggfunc", "sum")
    args_other = list(args_ts)
    args_other[2] = model_arg
    args_other[args_other.index(tmp_path / "ts.h5")] = tmp_path / "other.h5"
    assert run(args_ts, capsys)[0] == 0
    rc, _, err = run(args_other, capsys)
    assert rc == 0, err
    with open_results(tmp_path / "ts.h5") as a, open_results(tmp_path / "other.h5") as b:
        np.testing.assert_allclose(b.scores[()], a.scores[()], rtol=1e-5, atol=1e-6)
        assert b.arguments["model"]["kind"] in ("torch.export", "function")


def test_resume_after_interruption_recomputes_nothing_finished(files, tmp_path, capsys, monkeypatch):
    full = tmp_path / "full.h5"
    assert run(ism_args(files, full, "--chunk-size", "2", "--length-aggfunc", "mean"), capsys)[0] == 0

    calls = []
    real = basewise.ism.ISM_predict

    def interrupted(seqs, *a, **k):
        calls.append(list(seqs))
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second chunk
        return real(seqs, *a, **k)

    part = tmp_path / "part.h5"
    monkeypatch.setattr(basewise.ism, "ISM_predict", interrupted)
    rc, _, err = run(ism_args(files, part, "--chunk-size", "2", "--length-aggfunc", "mean"), capsys)
    assert rc == 130 and "resume" in err
    with open_results(part) as r:
        assert r.done.tolist() == [True, True, False, False, False]

    calls.clear()
    monkeypatch.setattr(basewise.ism, "ISM_predict", lambda seqs, *a, **k: (calls.append(list(seqs)), real(seqs, *a, **k))[1])
    rc, out, err = run(ism_args(files, part, "--chunk-size", "2", "--length-aggfunc", "mean"), capsys)
    assert rc == 0, err
    assert sorted(s for c in calls for s in c) == sorted(files["seqs"][2:])  # only the unfinished regions
    assert "3 computed now, 2 resumed" in out
    with open_results(part) as a, open_results(full) as b:
        assert a.complete and a.arguments == b.arguments
        np.testing.assert_array_equal(a.sequences[()], b.sequences[()])
        np.testing.assert_allclose(a.scores[()], b.scores[()], rtol=0, atol=1e-6)

    calls.clear()  # a finished file: nothing is recomputed
    assert run(ism_args(files, part, "--length-aggfunc", "mean"), capsys)[0] == 0
    assert calls == []


def test_sigterm_from_a_scheduler_saves_and_resumes(files, tmp_path, capsys, monkeypatch):
    d = files["dir"]
    out = tmp_path / "term.h5"
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.setenv("BASEWISE_TEST_STOP_ON", files["seqs"][3])  # in the 2nd chunk
    args = ["ism", "-m", "tinymodels:build_stopping", "--fasta", d / "seqs.fa", "-o", out, "-q",
            "--engine", "full", "--chunk-size", "3", "--batch-size", "1000", "--length-aggfunc", "mean"]
    rc, _, err = run(args, capsys)
    assert rc == 130, err
    with open_results(out) as r:
        assert r.done.tolist() == [True] * 3 + [False] * 2
    monkeypatch.setenv("BASEWISE_TEST_STOP_ON", "")
    rc, stdout, err = run(args, capsys)
    assert rc == 0 and "2 computed now, 3 resumed" in stdout
    import signal

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_refuses_to_resume_with_other_arguments(files, tmp_path, capsys):
    out = tmp_path / "x.h5"
    assert run(ism_args(files, out, "--compare", "subtract"), capsys)[0] == 0
    rc, _, err = run(ism_args(files, out, "--compare", "log2FC"), capsys)
    assert rc == 2 and "refusing to resume" in err and "compare_func" in err and "--overwrite" in err
    rc, _, err = run(ism_args(files, out, "--compare", "log2FC", "--overwrite"), capsys)
    assert rc == 0, err
    with open_results(out) as r:
        assert r.arguments["compare_func"] == "log2FC"


def _error_cases(d):
    bad_ts = d / "garbage.ts"
    bad_ts.write_bytes(b"not a model at all")
    bad_pt2 = d / "garbage.pt2"
    bad_pt2.write_bytes(b"PK nope")
    (d / "past_end.bed").write_text("chr2\t190\t214\n")
    (d / "unknown.bed").write_text("chr1\t0\t24\nchrX\t0\t24\n")
    (d / "unequal.bed").write_text("chr1\t0\t24\nchr1\t5\t20\n")
    (d / "unequal.fa").write_text(">a\nACGT\n>b\nACG\n")
    (d / "badint.bed").write_text("chr1\tzero\t24\n")
    m, fa, g = d / "model.ts", d / "seqs.fa", d / "genome.fa"
    return {
        "missing fasta": (["--fasta", d / "nope.fa", "-m", m], "does not exist"),
        "missing bed": (["--bed", d / "nope.bed", "--genome", g, "-m", m], "does not exist"),
        "missing genome": (["--bed", d / "regions.bed", "--genome", d / "nope.fa", "-m", m], "does not exist"),
        "missing model": (["--fasta", fa, "-m", d / "nope.ts"], "--model: file"),
        "unreadable model": (["--fasta", fa, "-m", bad_ts], "cannot read"),
        "unreadable pt2": (["--fasta", fa, "-m", bad_pt2], "torch.export"),
        "no module": (["--fasta", fa, "-m", "no_such_module_xyz:build"], "cannot import"),
        "no function": (["--fasta", fa, "-m", f"{d / 'tinymodels.py'}:nope"], "no function"),
        "not a model": (["--fasta", fa, "-m", f"{d / 'tinymodels.py'}:not_a_model"], "not a model"),
        "unknown chromosome": (["--bed", d / "unknown.bed", "--genome", g, "-m", m], "unknown chromosome 'chrX'"),
        "past chromosome end": (["--bed", d / "past_end.bed", "--genome", g, "-m", m], "past the end of chr2"),
        "width past start": (["--bed", d / "regions.bed", "--genome", g, "--width", 100000, "-m", m], "beginning"),
        "unequal bed": (["--bed", d / "unequal.bed", "--genome", g, "-m", m], "--width"),
        "unequal fasta": (["--fasta", d / "unequal.fa", "-m", m], "same length"),
        "bad bed": (["--bed", d / "badint.bed", "--genome", g, "-m", m], "integers"),
        "no genome": (["--bed", d / "regions.bed", "-m", m], "--genome"),
        "both inputs": (["--bed", d / "regions.bed", "--fasta", fa, "-m", m], "either"),
        "positions": (["--fasta", fa, "-m", m, "--end-pos", 99], "--end-pos"),
        "task out of range": (["--fasta", fa, "-m", m, "--tasks", "7"], "tasks"),
        "task names": (["--fasta", fa, "-m", m, "--tasks", "H3K27ac"], "tasks"),
        "output folder": (["--fasta", fa, "-m", m, "-o", d / "no" / "such" / "dir.h5"], "--output"),
    }


def test_errors_are_one_line_with_exit_code_2(files, tmp_path, capsys):
    for name, (extra, needle) in _error_cases(files["dir"]).items():
        argv = ["ism", "-q", *extra]
        if "-o" not in extra:
            argv += ["-o", tmp_path / f"{name}.h5"]
        rc, out, err = run(argv, capsys)
        assert rc == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, (name, err)
        assert lines[0].startswith("basewise ism: error: ")
        assert not (tmp_path / f"{name}.h5").exists(), name  # checked before the output is created


def test_deepshap_refuses_compiled_models(files, tmp_path, capsys):
    d = files["dir"]
    for model in ("model.ts", "model.pt2"):
        rc, _, err = run(["attribute", "-m", d / model, "--fasta", d / "seqs.fa", "-o", tmp_path / "a.h5", "-q"],
                         capsys)
        assert rc == 2 and "module:function" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "a.h5").exists()


def test_error_exit_code_from_a_real_process(files, tmp_path):
    d = files["dir"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        [sys.executable, "-m", "basewise", "ism", "-m", str(d / "nope.ts"), "--fasta", str(d / "seqs.fa"),
         "-o", str(tmp_path / "o.h5")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"basewise ism: error: --model: file '{d / 'nope.ts'}' does not exist "
                                                "(nor is it a module:function reference)"]
    assert proc.stdout == ""


def test_attribute_saliency_equals_get_attributions(files, tmp_path, capsys):
    attribution = pytest.importorskip("basewise.attribution")
    d = files["dir"]
    out = tmp_path / "attr.h5"
    rc, _, err = run(["attribute", "-m", d / "model.ts", "--fasta", d / "seqs.fa", "-o", out, "-q",
                      "--method", "saliency", "--chunk-size", "2", "--length-aggfunc", "sum", "--tasks", "0"], capsys)
    assert rc == 0, err
    agg = Aggregate(tasks=[0], length_aggfunc="sum")
    want = attribution.get_attributions(files["model"], files["seqs"], prediction_transform=agg, method="saliency")
    with open_results(out) as r:
        assert r.kind == "attribution" and r.scores.shape == (5, 4, L)
        np.testing.assert_allclose(r.scores[()], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_attribute_deepshap_hypothetical_then_modisco_export(files, tmp_path, capsys, monkeypatch):
    attribution = pytest.importorskip("basewise.attribution")
    d = files["dir"]
    monkeypatch.syspath_prepend(str(d))
    out = tmp_path / "shap.h5"
    argv = ["attribute", "-m", "tinymodels:build", "--fasta", d / "seqs.fa", "-o", out, "-q", "--hypothetical",
            "--n-shuffles", "3", "--seed", "1", "--chunk-size", "3", "--length-aggfunc", "sum", "--task-aggfunc", "sum"]
    rc, _, err = run(argv, capsys)
    assert rc == 0, err
    agg = Aggregate(length_aggfunc="sum", task_aggfunc="sum")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # DeepLIFT converges: the ReLU rule is used
        want = attribution.get_attributions(files["mod"].build(), files["seqs"], prediction_transform=agg,
                                            hypothetical=True, n_shuffles=3, seed=1)
    with open_results(out) as r:
        np.testing.assert_allclose(r.scores[()], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    rc, stdout, err = run(["modisco", out, "-o", tmp_path / "mod"], capsys)
    assert rc == 0, err and "modisco motifs -s" in stdout
    from basewise.modisco import load_modisco_input
    from basewise.sequence import to_onehot

    np.testing.assert_array_equal(load_modisco_input(tmp_path / "mod" / "ohe.npz"), to_onehot(files["seqs"]).numpy())
    np.testing.assert_allclose(load_modisco_input(tmp_path / "mod" / "shap.npz"), r_scores(out))


def r_scores(path):
    with open_results(path) as r:
        return r.scores[()]


def test_modisco_command_refusals(files, tmp_path, capsys):
    rc, _, err = run(["modisco", tmp_path / "none.h5", "-o", tmp_path / "m"], capsys)
    assert rc == 2 and "does not exist" in err
    out = tmp_path / "ism.h5"
    assert run(ism_args(files, out, "--length-aggfunc", "mean", "--task-aggfunc", "mean"), capsys)[0] == 0
    rc, _, err = run(["modisco", out, "-o", tmp_path / "m"], capsys)
    assert rc == 2 and "attributions" in err and len(err.strip().splitlines()) == 1


def test_demo_prints_the_summary_and_saves_the_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("logomaker")
    from basewise.demo import run_demo

    png = tmp_path / "demo.png"
    rc, out, err = run(["demo", "--top", "4", "--plot", png], capsys)
    assert rc == 0, err
    buf = io.StringIO()
    run_demo(top=4, file=buf, progress=False)
    assert out == buf.getvalue() + f"saved the ISM plot to {png}\n"
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG") and 10_000 < len(data) < 200_000


def test_demo_without_plot_is_unchanged(capsys):
    from basewise.demo import run_demo

    rc, out, _ = run(["demo", "--top", "2"], capsys)
    buf = io.StringIO()
    run_demo(top=2, file=buf, progress=False)
    assert rc == 0 and out == buf.getvalue()


def _fake_grelu(monkeypatch, lightning_model):
    """A stand-in ``grelu.lightning.LightningModel.load_from_checkpoint`` (gReLU is not a dependency)."""
    import types

    class LightningModel:
        @staticmethod
        def load_from_checkpoint(path, map_location=None):
            if open(path, "rb").read(4) != b"CKPT":
                raise RuntimeError("invalid load key")
            return lightning_model

    pkg, sub = types.ModuleType("grelu"), types.ModuleType("grelu.lightning")
    sub.LightningModel = LightningModel
    pkg.lightning = sub
    monkeypatch.setitem(sys.modules, "grelu", pkg)
    monkeypatch.setitem(sys.modules, "grelu.lightning", sub)


def test_grelu_checkpoint_with_task_names(files, tmp_path, capsys, monkeypatch):
    from _grelu_standins import StandInLightningModel, conv_net

    class Named(StandInLightningModel):
        model_params = {"n_tasks": 3}

        def get_task_idxs(self, names):
            return [["a", "b", "c"].index(n) for n in names]

    lm = Named(conv_net(tasks=3, out_bins=4), activation="exp").eval()
    _fake_grelu(monkeypatch, lm)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"CKPT")
    d = files["dir"]
    rc, _, err = run(["ism", "-m", ckpt, "--fasta", d / "seqs.fa", "-o", tmp_path / "c.h5", "-q", "--engine", "full",
                      "--tasks", "c,a", "--length-aggfunc", "sum", "--task-aggfunc", "mean", "--compare", "log2FC"], capsys)
    assert rc == 0, err
    assert type(lm.transform).__name__ == "Identity"  # the caller's model keeps its transform
    agg = Aggregate(tasks=[2, 0], length_aggfunc="sum", task_aggfunc="mean")
    want = ISM_predict(files["seqs"], lm, prediction_transform=agg, compare_func="log2FC", return_df=False,
                       progress=False, engine="full")
    with open_results(tmp_path / "c.h5") as r:
        assert r.arguments["model"]["kind"] == "grelu-checkpoint"
        assert r.arguments["transform"]["tasks"] == ["c", "a"]
        np.testing.assert_allclose(r.scores[()], want, rtol=0, atol=1e-6)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"nope")
    rc, _, err = run(["ism", "-m", bad, "--fasta", d / "seqs.fa", "-o", tmp_path / "b.h5", "-q"], capsys)
    assert rc == 2 and "cannot load gReLU checkpoint" in err


def test_grelu_checkpoint_without_grelu_installed(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "grelu", None)  # import grelu -> ImportError
    monkeypatch.delitem(sys.modules, "grelu.lightning", raising=False)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"CKPT")
    rc, _, err = run(["ism", "-m", ckpt, "--fasta", files["dir"] / "seqs.fa", "-o", tmp_path / "c.h5"], capsys)
    assert rc == 2 and "gReLU is not installed" in err and len(err.strip().splitlines()) == 1


WEIGHTS_MODEL_SRC = textwrap.dedent("""
    import os, torch

    def build():
        m = torch.nn.Sequential(torch.nn.Conv1d(4, 2, 5, padding=2))
        m.load_state_dict(torch.load(os.environ["BASEWISE_TEST_WEIGHTS"]))
        return m
""")


def test_resume_refuses_a_model_whose_weights_changed(files, tmp_path, capsys, monkeypatch):
    """A module:function model is identified by its weights, not by the text of -m: replaced
    weights are refused on resume (naming the change), the same model named differently is not."""
    d = files["dir"]
    (tmp_path / "wmodels.py").write_text(WEIGHTS_MODEL_SRC)
    wfile = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Conv1d(4, 2, 5, padding=2)).state_dict(), wfile)
    monkeypatch.setenv("BASEWISE_TEST_WEIGHTS", str(wfile))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r.h5"
    base = ["ism", "--fasta", d / "seqs.fa", "-o", out, "-q", "--engine", "full"]
    assert run(["ism", "-m", "./wmodels.py:build"] + base[1:], capsys)[0] == 0
    rc, _, err = run(["ism", "-m", "wmodels:build"] + base[1:], capsys)  # the same model
    assert rc == 0, err
    torch.save(torch.nn.Sequential(torch.nn.Conv1d(4, 2, 5, padding=2)).state_dict(), wfile)  # new weights
    rc, _, err = run(["ism", "-m", "wmodels:build"] + base[1:], capsys)
    assert rc == 2 and "refusing to resume" in err and "model.weights (weights changed)" in err


def test_gzipped_bed_and_narrowpeak(files, tmp_path, capsys):
    """--bed peaks.bed.gz / .narrowPeak.gz are read transparently (same scores as plain text);
    a file that is not text is one clear line, exit 2."""
    import gzip

    d = files["dir"]
    plain = tmp_path / "plain.h5"
    args = ["ism", "-m", d / "model.ts", "--bed", d / "regions.bed", "--genome", d / "genome.fa",
            "-q", "--engine", "full", "-o"]
    assert run(args + [plain], capsys)[0] == 0
    for name in ("peaks.bed.gz", "peaks.narrowPeak.gz"):
        gz = tmp_path / name
        with gzip.open(gz, "wt") as fh:
            fh.write((d / "regions.bed").read_text())
        rc, _, err = run(args[:4] + [gz] + args[5:] + [tmp_path / (name + ".h5")], capsys)
        assert rc == 0, err
        with open_results(plain) as a, open_results(tmp_path / (name + ".h5")) as b:
            np.testing.assert_array_equal(a.scores[()], b.scores[()])
    bad = tmp_path / "bad.bed"
    bad.write_bytes(b"\xff\xfe\x00binary")
    rc, _, err = run(args[:4] + [bad] + args[5:] + [tmp_path / "bad.h5"], capsys)
    assert rc == 2 and "--bed" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.h5").exists()


@pytest.mark.parametrize("top,expect", [(3, "3 of the 3 largest"), (20, "8 of the 8 largest")])
def test_demo_top_counts_what_it_lists(capsys, top, expect):
    rc, out, _ = run(["demo", "--top", top], capsys)
    assert rc == 0 and expect in out


@pytest.mark.parametrize("argv", [["demo", "--top", "0"], ["demo", "--top", "-3"], ["demo", "--batch-size", "0"]])
def test_demo_refuses_non_positive_numbers(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "positive" in capsys.readouterr().err


def test_modisco_messages_name_the_cli_flags(files, tmp_path, capsys):
    d = files["dir"]
    out = tmp_path / "sal.h5"
    argv = ["attribute", "-m", d / "model.ts", "--fasta", d / "seqs.fa", "-o", out, "-q", "--method", "saliency",
            "--length-aggfunc", "mean", "--task-aggfunc", "mean"]
    assert run(argv, capsys)[0] == 0
    rc, _, err = run(["modisco", out, "-o", tmp_path / "m"], capsys)
    assert rc == 2 and "--allow-non-hypothetical" in err and "allow_non_hypothetical=True" not in err


def test_dtype_refused_before_the_output_file_exists(files, tmp_path, capsys):
    out = tmp_path / "f64.h5"
    rc, _, err = run(ism_args(files, out, "--dtype", "float64"), capsys)
    assert rc == 2 and err.count("\n") == 1 and "--dtype" in err and not out.exists()
