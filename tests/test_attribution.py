"""get_attributions: the spec's analytic values on test model f, batched = one-at-a-time equality
against captum and plain-PyTorch references, DeepLIFT/SHAP through tangermeme (determinism,
hypothetical vs projected, the summation rule on Poisson and binary models, equality with
tangermeme on identity-activation models), N handling, validation, warnings and model restoration.

Tolerances: float32 gradients agree with their references to 1e-5 of the attribution scale
(max |reference|); integrated gradients (float64 sums of float32 gradients) to 1e-6 of the scale.
DeepLIFT summation: |sum of attributions - mean output difference| below 1e-4 of the output scale.
"""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import basewise
from basewise import attribution
from basewise.attribution import (
    CORRECT_GRAD_WARNING,
    HYPOTHETICAL_WARNING,
    Exp,
    deepshap_rules,
    get_attributions,
)

from _grelu_standins import StandInLightningModel, conv_net, make_test_model_f  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
W = [0.08, -0.04, 0.0, 0.0]  # f's gradient for L = 50: w / L
CAPTUM = ("saliency", "inputxgradient", "integratedgradients")


# ----------------------------------------------------------------------------- helpers
def plain_f():
    """The spec's test model f as a plain module."""
    conv = nn.Conv1d(4, 1, 1, bias=False)
    conv.weight.data.copy_(torch.tensor([4.0, -2.0, 0.0, 0.0]).view(1, 4, 1))
    return nn.Sequential(conv, nn.AdaptiveAvgPool1d(1))


@pytest.fixture(params=["lightning", "plain"])
def f(request):
    return make_test_model_f() if request.param == "lightning" else plain_f()


def random_seqs(rng, n, length, n_frac=0.0):
    seqs = ["".join(rng.choice(list("ACGT"), length)) for _ in range(n)]
    if n_frac:
        seqs = ["".join("N" if rng.random() < n_frac else c for c in s) for s in seqs]
    return seqs


def onehot(seqs):
    return basewise.to_onehot(seqs).numpy()


class SumTasks(nn.Module):
    """Prediction transform: sum over tasks and bins, (B, T, L) -> (B, 1, 1)."""

    def forward(self, y):
        return y.sum(dim=(1, 2), keepdim=True)


def grad_reference(forward, x):
    """Plain-PyTorch gradient of each sequence's scalar output, one sequence at a time."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_()
        (g,) = torch.autograd.grad(forward(xi).sum(), xi)
        out.append(g)
    return torch.cat(out).numpy()


def ig_reference(forward, x, n_steps=50):
    """The spec's integrated gradients: X * sum_k w_k grad(alpha_k X), Gauss-Legendre in float64."""
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    alphas, w = 0.5 * (1 + nodes), 0.5 * weights
    total = np.zeros(x.shape)
    for a, wk in zip(alphas, w):
        total += wk * grad_reference(forward, float(a) * x).astype(np.float64)
    return total * x.numpy().astype(np.float64)


def close(a, b, rtol):
    scale = max(np.abs(b).max(), 1e-30)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


# ----------------------------------------------------------------------------- spec values on f
def test_f_saliency_and_correct_grad(f):
    s = "ACGTTGCA" * 6 + "AC"  # L = 50
    a = get_attributions(f, s, method="saliency")
    assert a.shape == (1, 4, 50) and a.dtype == np.float32
    np.testing.assert_allclose(a[0], np.tile(np.array(W, np.float32)[:, None], (1, 50)), rtol=1e-6)
    c = get_attributions(f, s, method="saliency", correct_grad=True)
    assert c.dtype == np.float32
    np.testing.assert_allclose(c[0, :, 7], [0.07, -0.05, -0.01, -0.01], rtol=1e-5)
    np.testing.assert_allclose(c.sum(axis=1), 0, atol=1e-7)


def test_f_inputxgradient_and_integrated_gradients(f):
    s = "ACGTTGCA" * 6 + "AC"
    x = onehot(s)
    grad = np.array(W, np.float32)[None, :, None]
    ixg = get_attributions(f, s, method="inputxgradient")
    assert ixg.dtype == np.float32
    np.testing.assert_allclose(ixg, x * grad, rtol=1e-6)
    # -0.0 where X = 0 and the gradient is negative (C row at a non-C position)
    assert np.signbit(ixg[0, 1, 0]) and ixg[0, 1, 0] == 0
    ig = get_attributions(f, s, method="integratedgradients")
    assert ig.dtype == np.float64 and ig.shape == (1, 4, 50)
    # f is linear: IG is exact, one-hot x the (float32) gradient, summed over weights in float64
    np.testing.assert_allclose(ig, x * grad.astype(np.float64), rtol=1e-7, atol=0)


def test_f_input_forms_and_2d_onehot(f):
    s = "acgtNacgta"
    ref = get_attributions(f, s.upper(), method="saliency")
    idx = basewise.to_indices(s)
    for form in (s, [s], idx, idx.astype(np.int64)[0], basewise.to_onehot(s),
                 basewise.to_onehot(s)[0], basewise.to_onehot(s)[0].numpy()):
        np.testing.assert_array_equal(get_attributions(f, form, method="saliency"), ref)
    assert get_attributions(f, basewise.to_onehot([s, s])[0], method="saliency").shape == (1, 4, 10)


def test_n_handling(f):
    s = "ACNGTN" * 5
    x = onehot(s)
    sal = get_attributions(f, s, method="saliency")
    # saliency still reports the gradient at N (an all-zero column)
    np.testing.assert_allclose(sal[0, :, 2], np.array([4.0, -2.0, 0, 0]) / 30, rtol=1e-6)
    for m in ("inputxgradient", "integratedgradients"):
        a = get_attributions(f, s, method=m)
        assert np.all(a[0, :, x[0].sum(0) == 0] == 0)
    # deepshap: gReLU (tangermeme) refuses N; basewise explains it as an all-zero column (a
    # deliberate improvement; tests/test_deepshap_n.py checks it in depth)
    a = get_attributions(f, s, method="deepshap", n_shuffles=2, seed=0)
    assert a.shape == (1, 4, 30) and np.all(a[0, :, x[0].sum(0) == 0] == 0)


# ----------------------------------------------------------------------------- captum methods
@pytest.mark.parametrize("kind", ["lightning", "plain"])
@pytest.mark.parametrize("seed", [0, 1])
def test_batched_equals_one_at_a_time_and_references(kind, seed):
    rng = np.random.default_rng(seed)
    net = conv_net(tasks=2, out_bins=3, seed=seed)
    if kind == "lightning":
        model = StandInLightningModel(net, activation="exp")
        ref_forward = lambda x: SumTasks()(torch.exp(net(x)))  # noqa: E731
    else:
        model = net
        ref_forward = lambda x: SumTasks()(net(x))  # noqa: E731
    seqs = random_seqs(rng, 7, 23, n_frac=0.1)
    x = basewise.to_onehot(seqs)
    g = grad_reference(ref_forward, x)
    refs = {"saliency": g, "inputxgradient": g * x.numpy(),
            "integratedgradients": ig_reference(ref_forward, x)}
    for m in CAPTUM:
        batched = get_attributions(model, seqs, prediction_transform=SumTasks(), method=m, batch_size=3)
        single = get_attributions(model, seqs, prediction_transform=SumTasks(), method=m, batch_size=1)
        default = get_attributions(model, seqs, prediction_transform=SumTasks(), method=m)
        assert batched.shape == (7, 4, 23)
        assert batched.dtype == (np.float64 if m == "integratedgradients" else np.float32)
        tol = 1e-6 if m == "integratedgradients" else 1e-5
        close(batched, single, tol)
        close(default, single, tol)
        close(batched, refs[m], tol)


def test_matches_captum_one_at_a_time_loop():
    """gReLU's loop, reproduced with captum directly: same numbers (IG: same up to float32)."""
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    net = conv_net(tasks=1, seed=3)
    lm = StandInLightningModel(net, activation="sigmoid")
    seqs = random_seqs(np.random.default_rng(3), 5, 31)
    x = basewise.to_onehot(seqs)
    for m, cls, kw in (("saliency", Saliency, {"abs": False}), ("inputxgradient", InputXGradient, {}),
                       ("integratedgradients", IntegratedGradients, {})):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loop = np.vstack([cls(lm).attribute(x[i:i + 1], **kw).detach().numpy() for i in range(5)])
        ours = get_attributions(lm, seqs, method=m)
        close(ours, loop, 1e-5)


def test_default_batching_of_long_sequences():
    """At L = 400 the CPU defaults split integrated gradients' 50 scaled copies into chunks of 20
    rows and saliency into batches of 20 sequences: same numbers, no captum warnings."""
    from basewise.attribution import default_batch_size, default_internal_batch_size

    cpu = torch.device("cpu")
    assert default_batch_size("saliency", 400, cpu) == 20
    assert default_batch_size("integratedgradients", 400, cpu) == 1
    assert default_internal_batch_size(400, cpu, 1) == 20
    assert default_internal_batch_size(50, cpu, 1) is None
    net = conv_net(seed=22, channels=4)
    seqs = random_seqs(np.random.default_rng(22), 3, 400)
    x = basewise.to_onehot(seqs)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        chunked = get_attributions(net, seqs, method="integratedgradients")
        whole = get_attributions(net, seqs, method="integratedgradients", internal_batch_size=1000)
    assert [str(w.message) for w in rec] == []
    close(chunked, whole, 1e-12)
    close(chunked, ig_reference(net, x), 1e-6)


def test_target_and_scalar_requirement():
    net = conv_net(tasks=3, seed=5)  # (B, 3, 1)
    seqs = random_seqs(np.random.default_rng(5), 4, 20)
    for m in CAPTUM:
        with pytest.raises(ValueError, match="prediction_transform.*target"):
            get_attributions(net, seqs, method=m)
    pick = lambda y: y[:, 1:2]  # noqa: E731
    for m in CAPTUM:
        close(get_attributions(net, seqs, method=m, target=1, batch_size=3),
              get_attributions(net, seqs, method=m, prediction_transform=pick), 1e-6)
    # per-sequence targets are sliced to each batch
    t = [0, 2, 1, 2]
    per = get_attributions(net, seqs, method="saliency", target=t, batch_size=3)
    for i, ti in enumerate(t):
        close(per[i:i + 1], get_attributions(net, seqs[i], method="saliency", target=ti), 1e-6)
    # profile output (B, T, L_out): a (task, bin) tuple
    prof = conv_net(tasks=2, out_bins=4, seed=6)
    close(get_attributions(prof, seqs, method="saliency", target=(1, 2)),
          get_attributions(prof, seqs, method="saliency", prediction_transform=lambda y: y[:, 1, 2]), 1e-6)


def test_captum_options_pass_through():
    net = conv_net(seed=7)
    seqs = random_seqs(np.random.default_rng(7), 3, 16)
    x = basewise.to_onehot(seqs)
    ig10 = get_attributions(net, seqs, method="integratedgradients", n_steps=10)
    close(ig10, ig_reference(net, x, n_steps=10), 1e-6)
    close(get_attributions(net, seqs, method="integratedgradients", internal_batch_size=7, batch_size=2),
          get_attributions(net, seqs, method="integratedgradients"), 1e-6)
    # a baseline per sequence (sliced to each batch) vs a common one
    base = torch.full((3, 4, 16), 0.25)
    a = get_attributions(net, seqs, method="integratedgradients", baselines=base, batch_size=2)
    b = get_attributions(net, seqs, method="integratedgradients", baselines=0.25)
    close(a, b, 1e-6)
    assert np.abs(a - get_attributions(net, seqs, method="integratedgradients")).max() > 1e-4
    sal = get_attributions(net, seqs, method="saliency")
    np.testing.assert_array_equal(get_attributions(net, seqs, method="saliency", abs=True), np.abs(sal))


def test_grad_modes_and_float64_model():
    net = conv_net(seed=8)
    seqs = random_seqs(np.random.default_rng(8), 3, 12)
    ref = get_attributions(net, seqs, method="saliency")
    with torch.no_grad():
        np.testing.assert_array_equal(get_attributions(net, seqs, method="saliency"), ref)
    with torch.inference_mode():
        x = basewise.to_onehot(seqs)  # an inference tensor
        np.testing.assert_array_equal(get_attributions(net, x, method="saliency"), ref)
        assert get_attributions(net, x, method="deepshap", n_shuffles=2, seed=0).shape == (3, 4, 12)
    assert torch.is_grad_enabled()
    net64 = conv_net(seed=8).double()
    a64 = get_attributions(net64, seqs, method="saliency")
    assert a64.dtype == np.float64
    close(a64, ref, 1e-5)
    assert get_attributions(net64, seqs, method="integratedgradients").dtype == np.float64


# ----------------------------------------------------------------------------- deepshap
def deepshap_summation_error(model_forward, seqs, attr, n_shuffles, seed):
    """max |sum of projected attributions - mean over references of (y(x) - y(ref))| / scale."""
    from tangermeme.ersatz import dinucleotide_shuffle

    x = basewise.to_onehot(seqs)
    with torch.no_grad():
        y = model_forward(x).reshape(len(seqs))
        diffs = []
        for i in range(len(seqs)):
            refs = torch.cat([dinucleotide_shuffle(x[i:i + 1], n=1, random_state=seed + k)[:, 0]
                              for k in range(n_shuffles)])
            diffs.append((y[i] - model_forward(refs).reshape(n_shuffles)).mean())
    diffs = torch.stack(diffs).numpy()
    return np.abs(attr.sum(axis=(1, 2)) - diffs).max() / np.abs(diffs).max(), diffs


@pytest.mark.parametrize("activation", ["exp", "sigmoid"])
def test_deepshap_activation_gets_rule(activation):
    """gReLU's functional activations: tangermeme on the LightningModel breaks the summation rule
    ("Convergence deltas too high"); basewise's attributions satisfy it."""
    from tangermeme.deep_lift_shap import deep_lift_shap

    seqs = random_seqs(np.random.default_rng(11), 3, 40)
    x = basewise.to_onehot(seqs)
    net = conv_net(tasks=1, seed=11, scale=10.0)
    with torch.no_grad():  # logits that differ by units between a sequence and its shuffles
        net.conv1.weight.mul_(4)
        net.head.bias.sub_(net(x).mean())
    lm = StandInLightningModel(net, activation=activation)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        grelu_way = deep_lift_shap(lm, x, n_shuffles=6, random_state=2, device="cpu").numpy()
    assert any("Convergence deltas too high" in str(w.message) for w in rec)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ours = get_attributions(lm, seqs, n_shuffles=6, seed=2)
    assert [str(w.message) for w in rec] == []
    assert ours.shape == (3, 4, 40) and ours.dtype == np.float32
    err, diffs = deepshap_summation_error(lm, seqs, ours, 6, 2)
    assert err < 1e-4 and np.abs(diffs).max() > 1e-2
    err_grelu, _ = deepshap_summation_error(lm, seqs, grelu_way, 6, 2)
    assert err_grelu > 1e-2  # the stand-in really exercises the broken rule


@pytest.mark.parametrize("transform", [None, "sum"])
def test_deepshap_identity_activation_equals_tangermeme(transform):
    from tangermeme.deep_lift_shap import deep_lift_shap

    net = conv_net(tasks=2, seed=12)
    lm = StandInLightningModel(net, activation="identity")
    t = SumTasks() if transform else None
    seqs = random_seqs(np.random.default_rng(12), 4, 30)
    x = basewise.to_onehot(seqs)
    ours = get_attributions(lm, seqs, prediction_transform=t, n_shuffles=5, seed=3, target=0 if t else 1)
    lm.add_transform(t)
    theirs = deep_lift_shap(lm, x, n_shuffles=5, random_state=3, device="cpu",
                            target=0 if t else 1).numpy()
    lm.reset_transform()
    np.testing.assert_array_equal(ours, theirs)


def test_deepshap_seed_hypothetical_and_batch_size():
    lm = StandInLightningModel(conv_net(tasks=1, seed=13), activation="exp")
    seqs = random_seqs(np.random.default_rng(13), 3, 25)
    x = onehot(seqs)
    a = get_attributions(lm, seqs, n_shuffles=4, seed=5)
    np.testing.assert_array_equal(a, get_attributions(lm, seqs, n_shuffles=4, seed=5))
    assert np.abs(a - get_attributions(lm, seqs, n_shuffles=4, seed=6)).max() > 0
    hyp = get_attributions(lm, seqs, n_shuffles=4, seed=5, hypothetical=True)
    assert hyp.shape == a.shape and np.count_nonzero(hyp) > np.count_nonzero(a)
    np.testing.assert_array_equal(a, hyp * x)
    close(get_attributions(lm, seqs, n_shuffles=4, seed=5, batch_size=3), a, 1e-5)
    raw = get_attributions(lm, seqs, n_shuffles=4, seed=5, raw_outputs=True)
    assert raw.shape == (3, 4, 4, 25)


def test_deepshap_default_batching_matches_tangermeme_default():
    """basewise's CPU default (about 8k positions per tangermeme batch: 8 pairs at L = 1000,
    bounded by 1 and 64) gives tangermeme's default-batch (32 pairs, gReLU's) numbers: the
    references do not depend on the batching."""
    from basewise.attribution import DEEPSHAP_MAX_PAIRS, default_batch_size

    cpu = torch.device("cpu")
    assert default_batch_size("deepshap", 1000, cpu) == 8
    assert default_batch_size("deepshap", 20_000, cpu) == 1
    assert default_batch_size("deepshap", 10, cpu) == DEEPSHAP_MAX_PAIRS
    lm = StandInLightningModel(conv_net(tasks=1, seed=14), activation="exp")
    seqs = random_seqs(np.random.default_rng(14), 3, 1000)
    ours = get_attributions(lm, seqs, n_shuffles=6, seed=2)
    tm32 = get_attributions(lm, seqs, n_shuffles=6, seed=2, batch_size=32)
    close(ours, tm32, 1e-5)
    assert np.abs(ours).max() > 0


def test_deepshap_rules_for_unseen_activations():
    from tangermeme.deep_lift_shap import _nonlinear

    class GELU(nn.Module):  # enformer-pytorch's GELU (not torch.nn.GELU)
        def forward(self, x):
            return torch.sigmoid(1.702 * x) * x

    class Activation(nn.Module):  # gReLU's Activation("exp"): a plain function in .layer
        def __init__(self, fn):
            super().__init__()
            self.layer = fn

        def forward(self, x):
            return self.layer(x)

    class MyReLU(nn.ReLU):  # tangermeme hooks subclasses but looks rules up by exact type
        pass

    class Block(nn.Module):  # a composite that merely has a .layer attribute: no rule
        def __init__(self):
            super().__init__()
            self.layer = nn.Conv1d(8, 8, 1)

        def forward(self, x):
            return self.layer(x)

    net = nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), GELU(), Block(), MyReLU(), nn.Conv1d(8, 8, 3),
                        nn.Hardswish(), Activation(torch.tanh), nn.AdaptiveAvgPool1d(1),
                        nn.Conv1d(8, 1, 1), Activation(torch.exp))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)
    rules = deepshap_rules(net)
    assert set(rules) == {GELU, MyReLU, nn.Hardswish, Activation}
    assert rules[GELU] is _nonlinear and rules[Activation] is _nonlinear
    seqs = random_seqs(np.random.default_rng(14), 2, 30)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        a = get_attributions(net.eval(), seqs, n_shuffles=4, seed=0)
    assert [str(w.message) for w in rec] == []
    err, _ = deepshap_summation_error(net, seqs, a, 4, 0)
    assert err < 1e-4
    # a user rule overrides basewise's
    calls = []

    def user_rule(module, grad_input, grad_output):
        calls.append(type(module))
        return _nonlinear(module, grad_input, grad_output)

    get_attributions(net, seqs, n_shuffles=2, seed=0, additional_nonlinear_ops={GELU: user_rule})
    assert GELU in calls


def test_deepshap_plain_model_output_shapes():
    class Flat(nn.Module):  # (B,) output
        def __init__(self):
            super().__init__()
            self.net = conv_net(seed=15)

        def forward(self, x):
            return self.net(x).reshape(-1)

    seqs = random_seqs(np.random.default_rng(15), 2, 20)
    a = get_attributions(Flat(), seqs, n_shuffles=3, seed=1)
    b = get_attributions(conv_net(seed=15), seqs, n_shuffles=3, seed=1)
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- validation, warnings
class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = conv_net(seed=16)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_validation_before_any_model_call():
    m = Counting()
    names = "'deepshap', 'saliency', 'inputxgradient', 'integratedgradients'"
    with pytest.raises(NotImplementedError, match=names):
        get_attributions(m, "ACGT", method="ISM")
    with pytest.raises(NotImplementedError):
        get_attributions(m, "ACGT", method="Saliency")
    for bad in ("gpu!", -1, 1.5, None):
        with pytest.raises((ValueError, TypeError), match="device"):
            get_attributions(m, "ACGT", method="saliency", device=bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            get_attributions(m, "ACGT", method="saliency", device=0)
    with pytest.raises(ValueError, match="batch_size"):
        get_attributions(m, "ACGT", method="saliency", batch_size=0)
    with pytest.raises(ValueError, match="n_shuffles"):
        get_attributions(m, "ACGT", n_shuffles=0)
    with pytest.raises(TypeError, match="seed"):
        get_attributions(m, "ACGT", seed=1.5)
    with pytest.raises(TypeError, match="warning_threshold"):
        get_attributions(m, "ACGT", method="saliency", warning_threshold=1.0)
    with pytest.raises(ValueError, match="n_steps"):
        get_attributions(m, "ACGT", method="integratedgradients", n_steps=0)
    with pytest.raises(ValueError, match="return_references"):
        get_attributions(m, "ACGT", return_references=True)
    with pytest.raises(ValueError, match="not a valid DNA sequence"):
        get_attributions(m, "ACGU", method="saliency")
    with pytest.raises(ValueError, match="no sequences"):
        get_attributions(m, [], method="saliency")
    with pytest.raises(TypeError):
        get_attributions(m, 42, method="saliency")
    assert m.calls == 0


def test_enformer_refused_for_deepshap():
    class EnformerModel(nn.Module):
        def forward(self, x):
            return x.sum(dim=(1, 2), keepdim=True)[:, None, :, 0]

    lm = StandInLightningModel(EnformerModel())
    with pytest.raises(NotImplementedError, match="DeepShap currently cannot be applied to Enformer models."):
        get_attributions(lm, "ACGT")
    assert get_attributions(lm, "ACGT", method="saliency").shape == (1, 4, 4)


def test_warnings_texts_and_quiet_normal_path(f):
    s = "ACGTACGTAC"
    with pytest.warns(UserWarning) as rec:
        get_attributions(f, s, method="inputxgradient", hypothetical=True, correct_grad=True)
    assert [str(w.message) for w in rec] == [HYPOTHETICAL_WARNING, CORRECT_GRAD_WARNING]
    with pytest.warns(UserWarning, match="correct_grad = True will be ignored") as rec:
        get_attributions(f, s, method="deepshap", correct_grad=True, n_shuffles=2, seed=0,
                         warning_threshold=1e9)
    lm = StandInLightningModel(conv_net(seed=17), activation="exp")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for m in CAPTUM:
            get_attributions(lm, [s, s[::-1]], method=m)
        get_attributions(lm, [s, s[::-1]], n_shuffles=3, seed=0)
    assert [str(w.message) for w in rec] == []


# ----------------------------------------------------------------------------- model restoration
@pytest.mark.parametrize("method", ["deepshap", "saliency", "integratedgradients"])
def test_model_restored(method):
    net = conv_net(tasks=2, seed=18)
    lm = StandInLightningModel(net, activation="exp")
    caller_transform = SumTasks()
    lm.add_transform(caller_transform)
    lm.train()
    net.conv1.weight.requires_grad_(False)
    flags = [p.requires_grad for p in lm.parameters()]
    seqs = random_seqs(np.random.default_rng(18), 2, 15)
    get_attributions(lm, seqs, method=method, prediction_transform=lambda y: y[:, :1].sum(2, keepdim=True),
                     n_shuffles=2, seed=0)
    assert lm.transform is caller_transform
    assert all(m.training for m in lm.modules())
    assert [p.requires_grad for p in lm.parameters()] == flags
    assert all(p.device.type == "cpu" for p in lm.parameters())
    assert not any(hasattr(m, "_NON_LINEAR_OPS") or m._forward_hooks or m._backward_hooks
                   for m in lm.modules())

    class Boom(nn.Module):
        def forward(self, y):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        get_attributions(lm, seqs, method=method, prediction_transform=Boom(), n_shuffles=2, seed=0)
    assert lm.transform is caller_transform and lm.training
    assert [p.requires_grad for p in lm.parameters()] == flags

    plain = conv_net(seed=19).train()
    get_attributions(plain, seqs, method=method, n_shuffles=2, seed=0)
    assert all(m.training for m in plain.modules())
    assert all(p.requires_grad for p in plain.parameters())


def test_default_transform_of_lightning_model_is_used():
    """add_transform(None) keeps the current transform, in both paths (gReLU's semantics)."""
    net = conv_net(tasks=2, seed=20)
    lm = StandInLightningModel(net, activation="identity")
    lm.add_transform(SumTasks())
    seqs = random_seqs(np.random.default_rng(20), 2, 18)
    fresh = StandInLightningModel(net, activation="identity")
    for m in ("deepshap", "saliency"):
        np.testing.assert_array_equal(
            get_attributions(lm, seqs, method=m, n_shuffles=2, seed=0),
            get_attributions(fresh, seqs, method=m, prediction_transform=SumTasks(), n_shuffles=2, seed=0))


def test_exports():
    import basewise.score as score

    assert score.get_attributions is get_attributions
    assert attribution.METHODS == ("deepshap", "saliency", "inputxgradient", "integratedgradients")
    assert isinstance(Exp()(torch.zeros(1)), torch.Tensor)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_model_stays():
    net = conv_net(tasks=1, seed=21)
    lm = StandInLightningModel(net, activation="exp")
    seqs = random_seqs(np.random.default_rng(21), 5, 40)
    for m in CAPTUM:
        close(get_attributions(lm, seqs, method=m, device="cuda"), get_attributions(lm, seqs, method=m), 1e-4)
        assert next(lm.parameters()).device.type == "cpu"
    a = get_attributions(lm, seqs, device=0, n_shuffles=3, seed=0)
    close(a, get_attributions(lm, seqs, n_shuffles=3, seed=0), 1e-4)
    assert next(lm.parameters()).device.type == "cpu"
