"""deepshap on sequences with N (all-zero one-hot columns).

tangermeme's deep_lift_shap (and gReLU) refuse N; basewise explains such a sequence against
references that keep its N positions (basewise.attribution.n_references) and leaves sequences
without N to exactly the old call.
"""

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn

from basewise.attribution import get_attributions, n_references
from basewise.sequence import to_onehot

SEEDS = [0, 1, 7]


def cnn(seed, dtype=torch.float32):
    """A small CNN of convolutions, ReLU modules and average pooling: DeepLIFT's rescale rule
    makes Σ (x - ref) · m = f(x) - f(ref) exact for every reference."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(4, 8, 7, padding=3), nn.ReLU(),
        nn.Conv1d(8, 6, 5, dilation=2), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(6, 2),
    ).to(dtype).eval()


def with_n(rng, length, kind):
    s = list(rng.choice(list("ACGT"), length))
    if kind == "middle":
        a = int(rng.integers(5, length - 15))
        s[a:a + 9] = "N" * 9
    elif kind == "ends":
        s[:4] = "NNNN"
        s[-3:] = "NNN"
    elif kind == "sprinkled":
        for i in rng.choice(length, length // 6, replace=False):
            s[i] = "N"
    elif kind == "all":
        s = ["N"] * length
    elif kind == "one_known":
        s = ["N"] * length
        s[length // 2] = "G"
    return "".join(s)


def batch(rng, length, kinds):
    return [with_n(rng, length, k) for k in kinds]


def is_n(seqs):
    return to_onehot(seqs).sum(dim=1) == 0  # (B, L)


def dinucleotides(x):
    """Dinucleotide counts of the known bases of one-hot x (4, L), concatenated in order."""
    s = "".join("ACGT"[i] for i in x[:, x.sum(0) > 0].argmax(0).tolist())
    return Counter(s[i:i + 2] for i in range(len(s) - 1))


# ----------------------------------------------------------------------------- (1) no error, 0 at N
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("length,kinds", [
    (51, ["middle"]),
    (51, ["ends"]),
    (97, ["middle", "none", "sprinkled", "ends", "none"]),
])
def test_no_error_and_zero_at_n(seed, length, kinds):
    rng = np.random.default_rng(seed)
    seqs = batch(rng, length, kinds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no tangermeme warning about X, no convergence warning
        a = get_attributions(cnn(seed), seqs, n_shuffles=4, seed=seed, target=1)
    assert a.shape == (len(seqs), 4, length) and a.dtype == np.float32
    n = is_n(seqs).numpy()
    for i in range(len(seqs)):
        assert np.all(a[i][:, n[i]] == 0)
        assert np.abs(a[i]).sum() > 0
        # non-hypothetical: only the observed base is non-zero
        assert np.all(a[i] * (1 - to_onehot(seqs[i])[0].numpy()) == 0)


# ----------------------------------------------------------------------------- (2) references
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["middle", "ends", "sprinkled", "none"])
def test_references_keep_n_and_dinucleotides(seed, kind):
    rng = np.random.default_rng(seed)
    x = to_onehot(batch(rng, 63, [kind, kind, "middle"]))
    refs = n_references(x, 6, seed)
    assert refs.shape == (3, 6, 4, 63) and refs.dtype == x.dtype
    for i in range(3):
        known = x[i].sum(0) > 0
        for k in range(6):
            r = refs[i, k]
            assert torch.equal(r.sum(0) > 0, known)  # N exactly where x has N
            assert torch.all(r[:, ~known] == 0)
            assert torch.all(r.sum(0)[known] == 1) and torch.all((r == 0) | (r == 1))
            assert dinucleotides(r) == dinucleotides(x[i])
            kpos = torch.nonzero(known).flatten()
            # tangermeme's shuffle keeps the first and last (known) base
            assert torch.equal(r[:, kpos[0]], x[i][:, kpos[0]])
            assert torch.equal(r[:, kpos[-1]], x[i][:, kpos[-1]])
        assert any(not torch.equal(refs[i, k], x[i]) for k in range(6))  # actually shuffled


@pytest.mark.parametrize("seed", SEEDS)
def test_references_seeding(seed):
    rng = np.random.default_rng(seed)
    x = to_onehot(batch(rng, 45, ["middle", "sprinkled", "ends"]))
    refs = n_references(x, 5, seed)
    assert torch.equal(refs, n_references(x, 5, seed))
    # reference k uses seed + k: independent of the number of shuffles and of the other sequences
    assert torch.equal(refs[:, :3], n_references(x, 3, seed))
    assert torch.equal(refs[1:2], n_references(x[1:2], 5, seed))
    assert torch.equal(refs[:, 1:], n_references(x, 4, seed + 1)[:, :4])
    assert not torch.equal(refs, n_references(x, 5, seed + 100))
    fresh = n_references(x, 5, None)  # unseeded: still valid references
    assert torch.equal(fresh.sum(2) > 0, refs.sum(2) > 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_references_without_n_are_tangermemes(seed):
    """For a sequence without N, n_references draws exactly deep_lift_shap's references."""
    from tangermeme.deep_lift_shap import deep_lift_shap

    rng = np.random.default_rng(seed)
    x = to_onehot(batch(rng, 41, ["none", "none"]))
    out = deep_lift_shap(cnn(seed), x, n_shuffles=3, random_state=seed, return_references=True,
                         device="cpu", batch_size=4)
    assert torch.equal(n_references(x, 3, seed), out.references.to(x.dtype))


# ----------------------------------------------------------------------------- (3) summation
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kinds", [["middle"], ["ends", "sprinkled", "none", "middle"]])
def test_summation_to_delta(seed, kinds):
    rng = np.random.default_rng(seed)
    seqs = batch(rng, 75, kinds)
    model = cnn(seed)
    a = get_attributions(model, seqs, n_shuffles=5, seed=seed, target=0)
    x = to_onehot(seqs)
    refs = n_references(x, 5, seed)  # the references used (also tangermeme's for N-free ones)
    with torch.no_grad():
        fx = model(x)[:, 0].double()
        fr = model(refs.flatten(0, 1))[:, 0].double().view(len(seqs), 5)
    delta = (fx - fr.mean(1)).numpy()
    scale = max(np.abs(delta).max(), fx.abs().max().item())
    assert np.abs(delta).max() > 1e-4  # something to explain
    np.testing.assert_allclose(a.sum(axis=(1, 2)), delta, rtol=0, atol=1e-5 * scale)


# ----------------------------------------------------------------------------- (4) determinism
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("hypothetical", [False, True])
def test_deterministic_with_seed(seed, hypothetical):
    rng = np.random.default_rng(seed)
    seqs = batch(rng, 33, ["sprinkled", "none", "middle"])
    model = cnn(seed)
    a = get_attributions(model, seqs, n_shuffles=3, seed=seed, hypothetical=hypothetical)
    b = get_attributions(model, seqs, n_shuffles=3, seed=seed, hypothetical=hypothetical)
    np.testing.assert_array_equal(a, b)
    c = get_attributions(model, seqs, n_shuffles=3, seed=seed + 50, hypothetical=hypothetical)
    assert not np.array_equal(a[0], c[0])
    # the attributions of a sequence do not depend on the batch it is in, nor on batch_size
    d = get_attributions(model, seqs[:1], n_shuffles=3, seed=seed, hypothetical=hypothetical,
                         batch_size=2)
    np.testing.assert_allclose(d[0], a[0], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- (5) N-free unchanged
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("hypothetical", [False, True])
@pytest.mark.parametrize("kinds", [
    ["none", "middle", "none"],
    ["middle", "none", "all", "none", "none", "sprinkled"],
])
def test_n_free_sequences_bit_identical(seed, hypothetical, kinds):
    rng = np.random.default_rng(seed)
    seqs = batch(rng, 59, kinds)
    free = [i for i, k in enumerate(kinds) if k == "none"]
    model = cnn(seed)
    for bs in (None, 3):
        mixed = get_attributions(model, seqs, n_shuffles=4, seed=seed, hypothetical=hypothetical,
                                 batch_size=bs)
        alone = get_attributions(model, [seqs[i] for i in free], n_shuffles=4, seed=seed,
                                 hypothetical=hypothetical, batch_size=bs)  # the old code path
        np.testing.assert_array_equal(mixed[free], alone)


def test_n_free_batch_is_tangermemes_call():
    """Without any N the call is tangermeme's own, bit for bit."""
    from tangermeme.deep_lift_shap import deep_lift_shap

    rng = np.random.default_rng(3)
    seqs = batch(rng, 47, ["none"] * 3)
    model = cnn(3)
    ours = get_attributions(model, seqs, n_shuffles=3, seed=5, batch_size=4)
    theirs = deep_lift_shap(nn.Sequential(model, nn.Unflatten(1, (2, 1))), to_onehot(seqs),
                            n_shuffles=3, random_state=5, batch_size=4, device="cpu")
    np.testing.assert_array_equal(ours, theirs.numpy())


# ----------------------------------------------------------------------------- (6) hypothetical
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kinds", [["middle"], ["sprinkled", "none", "ends"]])
def test_hypothetical_with_n(seed, kinds):
    rng = np.random.default_rng(seed)
    seqs = batch(rng, 39, kinds)
    model = cnn(seed)
    kw = dict(n_shuffles=4, seed=seed, target=1)
    hyp = get_attributions(model, seqs, hypothetical=True, **kw)
    obs = get_attributions(model, seqs, **kw)
    x = to_onehot(seqs).numpy()
    np.testing.assert_allclose(hyp * x, obs, rtol=1e-6, atol=1e-8)
    # at N (reference 0 there) the hypothetical attribution of base b is b's mean multiplier
    raw = get_attributions(model, seqs, raw_outputs=True, **kw)  # (B, n, 4, L) multipliers
    assert raw.shape == (len(seqs), 4, 4, 39)
    n = is_n(seqs).numpy()
    assert n.any()
    for i in range(len(seqs)):
        np.testing.assert_allclose(hyp[i][:, n[i]], raw[i].mean(0)[:, n[i]], rtol=1e-5, atol=1e-7)
        assert np.abs(hyp[i][:, n[i]]).sum() > 0 or not n[i].any()


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("hypothetical", [False, True])
def test_all_n_and_one_known_base_are_zero(hypothetical):
    rng = np.random.default_rng(0)
    seqs = batch(rng, 31, ["all", "middle", "one_known", "none"])
    model = cnn(0)
    a = get_attributions(model, seqs, n_shuffles=3, seed=0, hypothetical=hypothetical)
    assert np.all(a[0] == 0) and np.all(a[2] == 0)
    assert np.abs(a[1]).sum() > 0 and np.abs(a[3]).sum() > 0
    # only degenerate sequences: no model call, zeros of the right shape and dtype
    z = get_attributions(model, seqs[0:1] + seqs[2:3], n_shuffles=3, seed=0,
                         hypothetical=hypothetical)
    assert z.shape == (2, 4, 31) and z.dtype == np.float32 and not z.any()
    raw = get_attributions(model, seqs[0], n_shuffles=3, seed=0, raw_outputs=True)
    assert raw.shape == (1, 3, 4, 31) and not raw.any()
    z64 = get_attributions(cnn(0, torch.float64), seqs[0], n_shuffles=3, seed=0)
    assert z64.dtype == np.float64 and not z64.any()


def test_float64_model_summation_tight():
    rng = np.random.default_rng(4)
    seqs = batch(rng, 55, ["sprinkled", "middle"])
    model = cnn(4, torch.float64)
    a = get_attributions(model, seqs, n_shuffles=6, seed=2)
    assert a.dtype == np.float64
    x = to_onehot(seqs).double()
    refs = n_references(x, 6, 2)
    with torch.no_grad():
        delta = (model(x)[:, 0] - model(refs.flatten(0, 1))[:, 0].view(2, 6).mean(1)).numpy()
    np.testing.assert_allclose(a.sum(axis=(1, 2)), delta, rtol=0, atol=1e-12)


def test_own_references_with_n():
    """references= given by the caller are used for every sequence (N ones included)."""
    rng = np.random.default_rng(5)
    seqs = batch(rng, 37, ["middle", "none", "ends"])
    model = cnn(5)
    refs = n_references(to_onehot(seqs), 3, 11)
    ours = get_attributions(model, seqs, references=refs, seed=0)
    np.testing.assert_array_equal(ours, get_attributions(model, seqs, n_shuffles=3, seed=11))
    bad = refs.clone()
    bad[0, 0, :, 0] = 0.5
    with pytest.raises(ValueError, match="references must be one-hot encoded"):
        get_attributions(model, seqs, references=bad)


def test_convergence_warnings_kept_for_n_sequences():
    """only_warn relaxes tangermeme's check of X only: a model DeepLIFT cannot explain still
    warns for the sequences with N, and the relaxed check itself says nothing."""

    class Square(nn.Module):  # no DeepLIFT rule: treated as linear
        def forward(self, x):
            return x * x

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 4, 5), Square(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                          nn.Linear(4, 1))
    rng = np.random.default_rng(6)
    seqs = batch(rng, 41, ["middle"])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        get_attributions(model, seqs, n_shuffles=3, seed=0, warning_threshold=1e-9)
    messages = [str(m.message) for m in w]
    assert any("onvergence deltas" in m for m in messages), messages
    assert not any("one-hot" in m for m in messages), messages


def test_not_one_hot_still_raises():
    """A tensor that is not one-hot (0.25s) is not treated as N: tangermeme's error, as before."""
    x = to_onehot(["ACGTNACGTACGATCG"])
    x[0, :, 2] = 0.25
    with pytest.raises(ValueError, match="X must be one-hot encoded"):
        get_attributions(cnn(0), x, n_shuffles=2, seed=0)


def test_doc_example():
    r = n_references(to_onehot("ACGNNTTACG"), 3, seed=0)
    assert r.shape == (1, 3, 4, 10) and not r[0, :, :, 3:5].any()
