"""get_attention_scores: each supported architecture against a direct computation of
softmax(q k^T / sqrt(d) + biases) from the same weights, gReLU's shapes, options, errors and
side effects.

References are computed in float64 from the module weights with explicit formulas (no code shared
with basewise or with the stand-in models' own attention). Tolerance: basewise's float32
probabilities must agree with the float64 reference to 2e-6 absolute (probabilities lie in [0, 1],
so this is relative to the output scale); rows must sum to 1 within 1e-5.
"""

import math
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from basewise.attention import (
    AttentionNotFoundError,
    get_attention_scores,
    list_attention_blocks,
    sdpa_probabilities,
)

from _attention_models import (  # noqa: E402  (tests/ is on sys.path)
    ConvTransformerModel,
    KdimModel,
    NoAttentionModel,
    SDPAModel,
    TorchEncoderModel,
    alibi_bias,
    central_mask_features,
    shift_relative,
)
from _grelu_standins import StandInLightningModel  # noqa: E402

ATOL = 2e-6
BASES = "ACGT"


def random_seqs(rng, b, length, n_frac=0.0):
    letters = np.array(list(BASES + "N"))
    p = np.array([1, 1, 1, 1, 0.0]) * (1 - n_frac) / 4
    p[4] = n_frac
    return ["".join(rng.choice(letters, size=length, p=p)) for _ in range(b)]


def onehot(seqs):
    x = torch.zeros(len(seqs), 4, len(seqs[0]))
    for b, s in enumerate(seqs):
        for i, c in enumerate(s):
            if c in BASES:
                x[b, BASES.index(c), i] = 1.0
    return x  # (B, 4, L)


def softmax64(logits):
    logits = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def assert_probs(actual, expected, atol=ATOL):
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)
    np.testing.assert_allclose(actual.sum(-1), 1.0, rtol=0, atol=1e-5)


def w64(t):
    return t.detach().double().numpy()


# ============================================================================ gReLU structure
def grelu_positions64(n, n_features):
    """Spec 4.2 relative-position features, written as loops: rows r = -(n-1) .. n-1."""
    half = n_features // 2
    g = math.exp(math.log(n + 1) / half)
    e = np.zeros((2 * n - 1, n_features))
    for row, r in enumerate(range(-(n - 1), n)):
        for m in range(1, half + 1):
            inside = float((g**m - 1) > abs(r))
            e[row, m - 1] = inside
            e[row, half + m - 1] = np.sign(r) * inside
    return e


def grelu_block_reference(mha, z):
    """z (B, n, C) float64 -> A (B, H, n, n): softmax(c + p), spec section 4.2."""
    b, n, _ = z.shape
    h, d = mha.n_heads, mha.key_len
    q = (z @ w64(mha.to_q.weight).T).reshape(b, n, h, d).transpose(0, 2, 1, 3) / math.sqrt(d)
    k = (z @ w64(mha.to_k.weight).T).reshape(b, n, h, d).transpose(0, 2, 1, 3)
    u, v = w64(mha.rel_content_bias), w64(mha.rel_pos_bias)  # (1, H, 1, d)
    content = np.einsum("bhid,bhjd->bhij", q + u, k)
    rho = grelu_positions64(n, mha.n_pos_features) @ w64(mha.to_pos_k.weight).T  # (2n-1, H*d)
    rho = rho.reshape(2 * n - 1, h, d).transpose(1, 0, 2)  # (H, 2n-1, d)
    offset = np.arange(n)[None, :] - np.arange(n)[:, None] + n - 1  # [i, j] -> row of offset j - i
    pos = np.einsum("bhid,hijd->bhij", q + v, rho[:, offset])  # (B, H, n, n)
    return softmax64(content + pos)


def grelu_reference(lightning, x):
    """gReLU's flow (spec 4.1) in float64 attention: list of (B, H, L', L') per block."""
    emb = lightning.model.embedding
    with torch.no_grad():
        h = emb.conv_tower(x)
        if isinstance(h, tuple):
            h = h[0]
        h = h.transpose(1, 2)  # (B, L', C)
        out = []
        for block in emb.transformer_tower.blocks:
            out.append(grelu_block_reference(block.mha, w64(block.norm(h))))
            h = block(h)
    return out


def grelu_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(n_tasks=1, n_conv=0, n_transformers=2, stem_channels=8, stem_kernel_size=1, n_heads=2,
               n_pos_features=4)
    cfg.update(kw)
    return StandInLightningModel(ConvTransformerModel(**cfg), activation="exp").eval()


def test_standin_attention_follows_spec_maths():
    """The stand-in's own get_attn_scores (pad-and-reshape shift) equals the loop-based reference."""
    rng = np.random.default_rng(1)
    for n_pos, length in [(4, 3), (6, 9), (8, 16)]:
        model = grelu_model(seed=length, n_pos_features=n_pos, n_heads=3, key_len=5)
        x = onehot(random_seqs(rng, 2, length))
        mha = model.model.embedding.transformer_tower.blocks[0].mha
        with torch.no_grad():
            z = model.model.embedding.transformer_tower.blocks[0].norm(
                model.model.embedding.conv_tower(x).transpose(1, 2))
            ours = mha.get_attn_scores(z).numpy()
        np.testing.assert_allclose(ours, grelu_block_reference(mha, w64(z)), rtol=0, atol=ATOL)


def test_standin_shift_matches_enformer_pytorch():
    ep = pytest.importorskip("enformer_pytorch.modeling_enformer")
    x = torch.randn(2, 3, 7, 13)
    torch.testing.assert_close(shift_relative(x), ep.relative_shift(x), rtol=0, atol=0)


def test_standin_positions_match_spec_example():
    # n = 3, F_pos = 4: F = 2, g = 2, widths 1 and 3 -> offsets |r| < 1 and |r| < 3.
    e = central_mask_features(3, 4).numpy()
    expected = np.array([[0, 1, 0, -1], [0, 1, 0, -1], [1, 1, 0, 0], [0, 1, 0, 1], [0, 1, 0, 1]], float)
    np.testing.assert_array_equal(e, expected)


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_grelu_all_blocks_and_each_block(b, seed):
    rng = np.random.default_rng(seed)
    model = grelu_model(seed=seed, n_transformers=3, n_heads=2, key_len=3, n_pos_features=6,
                        n_conv=1, stem_kernel_size=3)
    seqs = random_seqs(rng, b, 11, n_frac=0.1)  # odd length, pooled to L' = 5
    ref = np.stack(grelu_reference(model, onehot(seqs)), axis=1).astype(np.float32)  # (B, 3, H, L', L')
    ref = ref[0] if b == 1 else ref

    allb = get_attention_scores(model, seqs)
    assert_probs(allb, ref)
    for k in range(-3, 3):
        one = get_attention_scores(model, seqs, block_idx=k)
        assert_probs(one, ref[k] if b == 1 else ref[:, k])
        np.testing.assert_array_equal(one, allb[k] if b == 1 else allb[:, k])


def test_grelu_spec_shape_table():
    model = grelu_model()
    assert get_attention_scores(model, ["GGG"], block_idx=0).shape == (2, 3, 3)
    assert get_attention_scores(model, ["GGG"]).shape == (2, 2, 3, 3)
    assert get_attention_scores(model, "GGG").shape == (2, 2, 3, 3)
    seqs = ["ACGTACGT", "GGGGCCCC", "ATATATAN"]
    allb = get_attention_scores(model, seqs)
    last = get_attention_scores(model, seqs, block_idx=-1)
    assert allb.shape == (3, 2, 2, 8, 8) and last.shape == (3, 2, 8, 8)
    np.testing.assert_array_equal(last, allb[:, -1])
    assert allb.dtype == np.float32 and isinstance(allb, np.ndarray)


def test_grelu_borzoi_like_tuple_tower():
    """A conv tower returning (x, skip, skip), as Borzoi's does: its first element is used."""
    rng = np.random.default_rng(3)
    model = grelu_model(seed=3, n_conv=2, skips=True)
    seqs = random_seqs(rng, 2, 16)
    ref = np.stack(grelu_reference(model, onehot(seqs)), axis=1)
    out = get_attention_scores(model, seqs)
    assert out.shape == (2, 2, 2, 4, 4)
    assert_probs(out, ref.astype(np.float32))


def test_grelu_batch_equals_one_at_a_time():
    rng = np.random.default_rng(4)
    model = grelu_model(seed=4)
    seqs = random_seqs(rng, 4, 9)
    batch = get_attention_scores(model, seqs)
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(get_attention_scores(model, s), batch[i], rtol=0, atol=1e-6)


def test_block_list_and_float64_model():
    model = grelu_model(seed=20, n_transformers=3)
    assert list_attention_blocks(model) == [
        (f"model.embedding.transformer_tower.blocks.{k}.mha", "scores") for k in range(3)]
    seqs = ["ACGTTGCAN", "GATTACAGA"]
    single = get_attention_scores(model, seqs)
    double = get_attention_scores(model.double(), seqs, dtype=np.float64)  # input cast to float64
    assert double.dtype == np.float64 and next(model.parameters()).dtype == torch.float64
    np.testing.assert_allclose(double, single, rtol=0, atol=1e-6)
    ref = np.stack(grelu_reference(model, onehot(seqs).double()), axis=1)
    np.testing.assert_allclose(double, ref, rtol=0, atol=1e-12)


def test_input_forms_agree():
    model = grelu_model(seed=5)
    seqs = ["ACGTN", "TTGCA"]
    a = get_attention_scores(model, seqs)
    np.testing.assert_array_equal(get_attention_scores(model, [s.lower() for s in seqs]), a)
    np.testing.assert_array_equal(get_attention_scores(model, onehot(seqs)), a)
    idx = np.array([[BASES.index(c) if c in BASES else 4 for c in s] for s in seqs], dtype=np.int8)
    np.testing.assert_array_equal(get_attention_scores(model, idx), a)


def test_bare_network_without_lightning_wrapper():
    model = grelu_model(seed=6)
    seqs = ["ACGTAC", "GTTACA"]
    np.testing.assert_array_equal(get_attention_scores(model.model, seqs), get_attention_scores(model, seqs))


# ============================================================================ nn.MultiheadAttention
def mha_reference(mha, query, key, attn_mask=None, key_padding_mask=None):
    """Batch-first float64 inputs -> (B, H, L, S) from the in-projection weights."""
    e, h = mha.embed_dim, mha.num_heads
    d = e // h
    if mha._qkv_same_embed_dim:
        wq, wk = w64(mha.in_proj_weight[:e]), w64(mha.in_proj_weight[e:2 * e])
    else:
        wq, wk = w64(mha.q_proj_weight), w64(mha.k_proj_weight)
    bq, bk = w64(mha.in_proj_bias[:e]), w64(mha.in_proj_bias[e:2 * e])
    b, n, _ = query.shape
    s = key.shape[1]
    q = (query @ wq.T + bq).reshape(b, n, h, d).transpose(0, 2, 1, 3)
    k = (key @ wk.T + bk).reshape(b, s, h, d).transpose(0, 2, 1, 3)
    logits = np.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(d)
    if attn_mask is not None:
        logits = logits + attn_mask  # float mask, -inf = hidden
    if key_padding_mask is not None:
        logits = np.where(key_padding_mask[:, None, None, :], -np.inf, logits)
    return softmax64(logits)


def encoder_reference(model, x):
    with torch.no_grad():
        h = model.stem(x).transpose(1, 2)  # (B, L, C)
        n = h.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(n) if model.causal else None
        pad = model.padding_mask(h.shape[0], n)
        out = []
        for layer in model.encoder.layers:
            z = layer.norm1(h) if layer.norm_first else h
            out.append(mha_reference(layer.self_attn, w64(z), w64(z),
                                     attn_mask=None if mask is None else w64(mask),
                                     key_padding_mask=None if pad is None else pad.numpy()))
            kw = dict(src_mask=mask, is_causal=model.causal, src_key_padding_mask=pad)
            if model.batch_first:
                h = layer(h, **kw)
            else:
                h = layer(h.transpose(0, 1), **kw).transpose(0, 1)
    return np.stack(out, axis=1)  # (B, n_layers, H, L, L)


@pytest.mark.parametrize("cfg", [
    dict(),
    dict(batch_first=False),
    dict(causal=True),
    dict(norm_first=True, n_heads=4, n_layers=3),
    dict(pad_last=2),  # padding mask: torch would otherwise run its nested-tensor fast path
])
@pytest.mark.parametrize("b", [1, 2])
def test_torch_encoder_layers(cfg, b):
    torch.manual_seed(7)
    model = TorchEncoderModel(**cfg).eval()
    seqs = random_seqs(np.random.default_rng(b), b, 10, n_frac=0.1)
    ref = encoder_reference(model, onehot(seqs)).astype(np.float32)
    ref = ref[0] if b == 1 else ref
    allb = get_attention_scores(model, seqs)
    assert_probs(allb, ref)
    for k in (0, -1):
        assert_probs(get_attention_scores(model, seqs, block_idx=k), ref[k] if b == 1 else ref[:, k])


def test_mha_kdim_vdim_and_key_padding_mask():
    torch.manual_seed(8)
    model = KdimModel().eval()
    seqs = random_seqs(np.random.default_rng(8), 3, 7)
    with torch.no_grad():
        h = model.stem(onehot(seqs)).transpose(1, 2)
        ref = mha_reference(model.attn, w64(h), w64(model.to_key(h)),
                            key_padding_mask=model.padding_mask(3, 7, "cpu").numpy())
    out = get_attention_scores(model, seqs, block_idx=0)
    assert_probs(out, ref.astype(np.float32))
    assert np.all(out[..., -1] == 0)  # the padded key gets no attention


# ============================================================================ scaled_dot_product_attention
def sdpa_model_reference(model, x):
    out = []
    with torch.no_grad():
        h = model.stem(x).transpose(1, 2)
        for block in model.blocks:
            q, k, _ = block.qk(block.norm(h))
            q, k = w64(q), w64(k)
            if block.kv_heads != block.n_heads:
                k = np.repeat(k, block.n_heads // block.kv_heads, axis=1)
            n = q.shape[2]
            scale = block.scale if block.scale is not None else 1 / math.sqrt(q.shape[-1])
            logits = np.einsum("bhid,bhjd->bhij", q, k) * scale
            if block.mask == "causal":
                logits = np.where(np.tril(np.ones((n, n), bool)), logits, -np.inf)
            elif block.mask == "alibi":
                logits = logits + w64(alibi_bias(block.n_heads, n))[None]
            elif block.mask == "bool":
                logits[..., -1] = -np.inf
            out.append(softmax64(logits))
            h = block(h)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("cfg", [
    dict(),
    dict(mask="causal"),
    dict(mask="alibi", scale=0.7),
    dict(mask="bool"),
    dict(n_heads=4, kv_heads=2, dim=16),
])
@pytest.mark.parametrize("b", [1, 3])
def test_sdpa_blocks(cfg, b):
    torch.manual_seed(9)
    model = SDPAModel(**cfg).eval()
    seqs = random_seqs(np.random.default_rng(b), b, 9)
    ref = sdpa_model_reference(model, onehot(seqs)).astype(np.float32)
    ref = ref[0] if b == 1 else ref
    assert_probs(get_attention_scores(model, seqs), ref)
    for k in (1, -1):
        assert_probs(get_attention_scores(model, seqs, block_idx=k), ref[k] if b == 1 else ref[:, k])
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention


def test_sdpa_probabilities_reproduce_torch_kernel():
    """probabilities @ v equals F.scaled_dot_product_attention's output for each mask kind."""
    g = torch.Generator().manual_seed(10)
    q = torch.randn(2, 4, 6, 8, generator=g)
    k = torch.randn(2, 4, 5, 8, generator=g)
    v = torch.randn(2, 4, 5, 3, generator=g)
    keep = torch.rand(6, 5, generator=g) > 0.3
    keep[:, 0] = True
    cases = [dict(), dict(is_causal=True), dict(attn_mask=keep), dict(attn_mask=torch.randn(4, 6, 5, generator=g)),
             dict(scale=0.3)]
    for kw in cases:
        p = sdpa_probabilities(q, k, v, **kw)
        torch.testing.assert_close(p @ v, F.scaled_dot_product_attention(q, k, v, **kw), rtol=0, atol=1e-5)
    dead = torch.ones(6, 5, dtype=torch.bool)
    dead[2] = False  # query 2 may attend to nothing: torch returns 0 there, and so do we
    p = sdpa_probabilities(q, k, v, attn_mask=dead)
    assert torch.all(p[:, :, 2] == 0) and torch.allclose(p[:, :, [0, 1, 3, 4, 5]].sum(-1), torch.ones(2, 4, 5))
    torch.testing.assert_close(p @ v, F.scaled_dot_product_attention(q, k, v, attn_mask=dead), rtol=0, atol=1e-5)
    kg, vg = k[:, :2], v[:, :2]
    p = sdpa_probabilities(q, kg, vg, enable_gqa=True)
    torch.testing.assert_close(p @ vg.repeat_interleave(2, dim=1),
                               F.scaled_dot_product_attention(q, kg, vg, enable_gqa=True), rtol=0, atol=1e-5)


def test_sdpa_alias_imported_by_name_is_captured_and_restored(tmp_path, monkeypatch):
    """A module that did `from torch.nn.functional import scaled_dot_product_attention as attend`."""
    import importlib

    (tmp_path / "basewise_alias_attn.py").write_text(
        "import torch\n"
        "from torch.nn.functional import scaled_dot_product_attention as attend\n"
        "\n"
        "class AliasAttn(torch.nn.Module):\n"
        "    def forward(self, x):  # x (B, 4, L): one head, the channels as features\n"
        "        q = x.transpose(1, 2)[:, None]  # (B, 1, L, 4)\n"
        "        return attend(q, q, q)[:, 0]  # scaled_dot_product_attention under an alias\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("basewise_alias_attn")
    try:
        model = mod.AliasAttn()
        assert list_attention_blocks(model) == [("", "sdpa")]
        seqs = ["ACGTA", "GGTCN"]
        q = onehot(seqs).transpose(1, 2).double().numpy()
        ref = softmax64(np.einsum("bid,bjd->bij", q, q) / 2.0)[:, None]  # scale 1/sqrt(4)
        assert_probs(get_attention_scores(model, seqs, block_idx=0), ref.astype(np.float32))
        assert mod.attend is torch._C._nn.scaled_dot_product_attention
    finally:
        sys.modules.pop("basewise_alias_attn", None)


# ============================================================================ flash_attn package
FAKE_FLASH_INTERFACE = """
import math
import torch


def _attend(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None):
    # plain-torch stand-in for flash-attn 2 (documented semantics), q (B, L, H, d), k/v (B, S, H_k, d)
    b, n, h, d = q.shape
    s = k.shape[1]
    k = k.repeat_interleave(h // k.shape[2], dim=2)
    v = v.repeat_interleave(h // v.shape[2], dim=2)
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    left, right = window_size
    if causal:
        right = 0
    for i in range(n):
        for j in range(s):
            rel = j - (i + s - n)
            if alibi_slopes is not None:
                scores[:, :, i, j] -= alibi_slopes.reshape(-1, h) * abs(rel)
            if (left >= 0 and rel < -left) or (right >= 0 and rel > right):
                scores[:, :, i, j] = float("-inf")
    p = torch.nan_to_num(scores.softmax(-1))
    return torch.einsum("bhij,bjhd->bihd", p, v)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    return _attend(q, k, v, softmax_scale, causal, window_size, softcap, alibi_slopes)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    return _attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], softmax_scale, causal, window_size, softcap,
                   alibi_slopes)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    return _attend(q, kv[:, :, 0], kv[:, :, 1], softmax_scale, causal, window_size, softcap, alibi_slopes)
"""

FLASH_MODEL = """
import torch
from torch import nn
import flash_attn
from flash_attn import flash_attn_qkvpacked_func as packed_attention


class FlashBlock(nn.Module):
    def __init__(self, dim, n_heads, mode, kw):
        super().__init__()
        self.h, self.d, self.mode, self.kw = n_heads, dim // n_heads, mode, kw
        self.kv_heads = 1 if mode == "gqa" else n_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * self.kv_heads * self.d)
        self.out = nn.Linear(dim, dim)

    def qkv(self, x):  # x (B, n, C) -> q (B, n, H, d), kv (B, S, 2, H_k, d)
        b, n, _ = x.shape
        src = x[:, ::2] if self.mode == "cross" else x  # cross-attention to every other position
        q = self.to_q(x).reshape(b, n, self.h, self.d)
        kv = self.to_kv(src).reshape(b, src.shape[1], 2, self.kv_heads, self.d)
        return q, kv

    def forward(self, x):
        q, kv = self.qkv(x)
        if self.mode == "packed":
            o = packed_attention(torch.stack([q, kv[:, :, 0], kv[:, :, 1]], dim=2), 0.0, **self.kw)
        elif self.mode == "kvpacked":
            o = flash_attn.flash_attn_kvpacked_func(q, kv, **self.kw)
        else:
            o = flash_attn.flash_attn_func(q, kv[:, :, 0], kv[:, :, 1], **self.kw)
        return x + self.out(o.reshape(x.shape))


class FlashModel(nn.Module):
    def __init__(self, mode, kw, dim=8, n_heads=2, n_blocks=2):
        super().__init__()
        self.stem = nn.Conv1d(4, dim, 3, padding=1)
        self.blocks = nn.Sequential(*[FlashBlock(dim, n_heads, mode, kw) for _ in range(n_blocks)])

    def forward(self, x):
        return self.blocks(self.stem(x).transpose(1, 2)).sum()
"""


@pytest.fixture
def fake_flash(tmp_path, monkeypatch):
    """A plain-torch `flash_attn` package (the real one needs CUDA) and a model module using it."""
    import importlib

    pkg = tmp_path / "flash_attn"
    pkg.mkdir()
    (pkg / "flash_attn_interface.py").write_text(FAKE_FLASH_INTERFACE)
    (pkg / "__init__.py").write_text(
        "from flash_attn.flash_attn_interface import flash_attn_func, flash_attn_qkvpacked_func, "
        "flash_attn_kvpacked_func\n")
    (tmp_path / "basewise_flash_model.py").write_text(FLASH_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("flash_attn", "flash_attn.flash_attn_interface", "basewise_flash_model"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    mod = importlib.import_module("basewise_flash_model")
    yield mod
    for name in ("flash_attn", "flash_attn.flash_attn_interface", "basewise_flash_model"):
        sys.modules.pop(name, None)


def flash_reference(model, x):
    out = []
    with torch.no_grad():
        h = model.stem(x).transpose(1, 2)
        for block in model.blocks:
            q, kv = block.qkv(h)
            q, k = w64(q).transpose(0, 2, 1, 3), w64(kv[:, :, 0]).transpose(0, 2, 1, 3)  # (B, H, ., d)
            k = np.repeat(k, q.shape[1] // k.shape[1], axis=1)
            n, s = q.shape[2], k.shape[2]
            kw = block.kw
            scale = kw.get("softmax_scale") or 1 / math.sqrt(q.shape[-1])
            logits = np.einsum("bhid,bhjd->bhij", q, k) * scale
            if kw.get("softcap"):
                logits = kw["softcap"] * np.tanh(logits / kw["softcap"])
            rel = np.arange(s)[None, :] - np.arange(n)[:, None] - (s - n)
            if kw.get("alibi_slopes") is not None:
                logits = logits - w64(kw["alibi_slopes"])[None, :, None, None] * np.abs(rel)
            left, right = kw.get("window_size", (-1, -1))
            right = 0 if kw.get("causal") else right
            hidden = ((rel < -left) & (left >= 0)) | ((rel > right) & (right >= 0))
            out.append(softmax64(np.where(hidden, -np.inf, logits)))
            h = block(h)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("mode, kw", [
    ("plain", dict()),
    ("plain", dict(causal=True, softmax_scale=0.4)),
    ("packed", dict(window_size=(2, 1))),
    ("kvpacked", dict(softcap=1.5, alibi_slopes=torch.tensor([0.5, 0.25]))),
    ("gqa", dict(causal=True)),
    ("cross", dict(alibi_slopes=torch.tensor([0.3, 0.1]))),  # S = L/2: bottom-right aligned bias
])
def test_flash_attn_package_kernels(fake_flash, mode, kw):
    torch.manual_seed(19)
    model = fake_flash.FlashModel(mode, kw).eval()
    assert [k for _, k in list_attention_blocks(model)] == ["flash", "flash"]
    seqs = random_seqs(np.random.default_rng(19), 2, 10)
    ref = flash_reference(model, onehot(seqs)).astype(np.float32)
    assert_probs(get_attention_scores(model, seqs), ref)
    assert_probs(get_attention_scores(model, seqs[:1], block_idx=-1), ref[0, -1])
    import flash_attn
    import flash_attn.flash_attn_interface as fai
    assert fake_flash.packed_attention is fai.flash_attn_qkvpacked_func
    assert flash_attn.flash_attn_func is fai.flash_attn_func
    assert "wrapper" not in fai.flash_attn_func.__code__.co_name


# ============================================================================ enformer-pytorch
def enformer_reference(model, x_bl4):
    ep = sys.modules["enformer_pytorch.modeling_enformer"]
    out = []
    with torch.no_grad():
        h = model._trunk[:4](x_bl4)  # (B, n, dim)
        for layer in model.transformer:
            norm, attn = layer[0].fn[0], layer[0].fn[1]
            z = w64(norm(h))
            b, n, _ = z.shape
            hh = attn.heads
            q = (z @ w64(attn.to_q.weight).T).reshape(b, n, hh, -1).transpose(0, 2, 1, 3)
            k = (z @ w64(attn.to_k.weight).T).reshape(b, n, hh, -1).transpose(0, 2, 1, 3)
            q = q / math.sqrt(q.shape[-1])
            content = np.einsum("bhid,bhjd->bhij", q + w64(attn.rel_content_bias), k)
            pos = w64(ep.get_positional_embed(n, attn.num_rel_pos_features, "cpu", use_tf_gamma=False))
            rel_k = (pos @ w64(attn.to_rel_k.weight).T).reshape(2 * n - 1, hh, -1).transpose(1, 0, 2)
            offset = np.arange(n)[None, :] - np.arange(n)[:, None] + n - 1
            rel = np.einsum("bhid,hijd->bhij", q + w64(attn.rel_pos_bias), rel_k[:, offset])
            out.append(softmax64(content + rel))
            h = layer(h)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("b", [1, 2])
def test_enformer_pytorch_attention(b):
    ep = pytest.importorskip("enformer_pytorch")
    torch.manual_seed(11)
    model = ep.Enformer.from_hparams(dim=24, depth=2, heads=2, attn_dim_key=4, output_heads=dict(human=3),
                                     target_length=-1, num_downsamples=3, dim_divisible_by=4).eval()
    assert [k for _, k in list_attention_blocks(model)] == ["enformer", "enformer"]
    seqs = random_seqs(np.random.default_rng(b), b, 64)
    ref = enformer_reference(model, onehot(seqs).transpose(1, 2)).astype(np.float32)  # L' = 8
    ref = ref[0] if b == 1 else ref
    assert_probs(get_attention_scores(model, seqs), ref, atol=1e-5)
    assert_probs(get_attention_scores(model, seqs, block_idx=-1), ref[-1] if b == 1 else ref[:, -1], atol=1e-5)


# ============================================================================ options
def test_average_heads_dtype_and_blocks():
    model = grelu_model(seed=12, n_transformers=3, n_heads=4)
    seqs = ["ACGTTGCA", "TTTTACGA"]
    full = get_attention_scores(model, seqs)  # (2, 3, 4, 8, 8)
    avg = get_attention_scores(model, seqs, average_heads=True)
    assert avg.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(avg, full.mean(axis=2), rtol=0, atol=1e-7)
    np.testing.assert_allclose(avg.sum(-1), 1.0, atol=1e-5)

    half = get_attention_scores(model, seqs, dtype=np.float16)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, full, rtol=0, atol=1e-3)
    assert get_attention_scores(model, seqs, dtype=torch.float64).dtype == np.float64
    assert get_attention_scores(model, seqs, dtype="float64").dtype == np.float64

    sel = get_attention_scores(model, seqs, blocks=[2, -3, 2])
    assert sel.shape == (2, 3, 4, 8, 8)
    np.testing.assert_array_equal(sel, full[:, [2, 0, 2]])
    one = get_attention_scores(model, seqs[:1], blocks=[1], average_heads=True)
    assert one.shape == (1, 8, 8)
    np.testing.assert_allclose(one, full[0, [1]].mean(axis=1), atol=1e-7)


def test_blocks_of_different_shapes():
    class TwoScales(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv1d(4, 4, 1)
            self.a1 = nn.MultiheadAttention(4, 2, batch_first=True)
            self.a2 = nn.MultiheadAttention(4, 1, batch_first=True)

        def forward(self, x):
            h = self.stem(x).transpose(1, 2)
            h = self.a1(h, h, h)[0]
            h = F.avg_pool1d(h.transpose(1, 2), 2).transpose(1, 2)
            return self.a2(h, h, h)[0]

    torch.manual_seed(13)
    model = TwoScales()
    assert get_attention_scores(model, "ACGTACGT", block_idx=0).shape == (2, 8, 8)
    assert get_attention_scores(model, "ACGTACGT", block_idx=1).shape == (1, 4, 4)
    with pytest.raises(ValueError, match="different shapes"):
        get_attention_scores(model, "ACGTACGT")


# ============================================================================ errors
class CallCounter:
    def __init__(self, *modules):
        self.n = 0
        self.handles = [m.register_forward_pre_hook(self) for m in modules]

    def __call__(self, module, args):
        self.n += 1


def test_out_of_range_block_idx_raises_before_compute():
    model = grelu_model()
    counter = CallCounter(*model.modules())
    for bad in (2, -3, 10):
        with pytest.raises(IndexError, match=rf"^index {bad} is out of range"):
            get_attention_scores(model, "ACGT", block_idx=bad)
        with pytest.raises(IndexError, match=rf"^index {bad} is out of range"):
            get_attention_scores(model, "ACGT", blocks=[0, bad])
    assert counter.n == 0


def test_no_attention_error_names_what_was_searched():
    model = NoAttentionModel()
    counter = CallCounter(*model.modules())
    with pytest.raises(AttentionNotFoundError) as info:
        get_attention_scores(model, "ACGT")
    msg = str(info.value)
    for what in ("MultiheadAttention", "get_attn_scores", "enformer-pytorch", "scaled_dot_product_attention"):
        assert what in msg
    assert isinstance(info.value, AttributeError) and isinstance(info.value, ValueError)
    assert counter.n == 0


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(block_idx=True), TypeError, "block_idx"),
    (dict(block_idx=1.0), TypeError, "block_idx"),
    (dict(block_idx=0, blocks=[0]), ValueError, "not both"),
    (dict(blocks=[]), ValueError, "blocks"),
    (dict(blocks="01"), TypeError, "blocks"),
    (dict(dtype=np.int32), ValueError, "dtype"),
    (dict(dtype=torch.bfloat16), ValueError, "dtype"),
    (dict(average_heads="yes"), TypeError, "average_heads"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        get_attention_scores(grelu_model(), "ACGT", **kwargs)


def test_bad_inputs_keep_grelu_errors():
    model = grelu_model()
    with pytest.raises(ValueError, match="not a valid DNA sequence"):
        get_attention_scores(model, "ACGX")
    with pytest.raises(TypeError, match="model"):
        get_attention_scores(lambda x: x, "ACGT")


def test_block_never_called_is_reported():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 1)
            self.attn = nn.MultiheadAttention(4, 1)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(RuntimeError, match="attn"):
        get_attention_scores(Unused(), "ACGT")


# ============================================================================ side effects
def test_eval_mode_no_grad_and_mode_restored():
    model = grelu_model(seed=14, dropout=0.5).train()
    model.model.embedding.conv_tower.eval()  # mixed modes must come back as they were
    modes = {name: m.training for name, m in model.named_modules()}
    seen = []
    hook = model.model.embedding.transformer_tower.blocks[1].mha.register_forward_pre_hook(
        lambda m, a: seen.append((torch.is_grad_enabled(), m.training)))
    seqs = ["ACGTACGTA", "GTCAGTCAA"]
    a = get_attention_scores(model, seqs)
    b = get_attention_scores(model, seqs)
    hook.remove()
    np.testing.assert_array_equal(a, b)  # dropout off: deterministic
    ref = np.stack(grelu_reference(model.eval(), onehot(seqs)), axis=1)
    assert_probs(a, ref.astype(np.float32))
    model.train()
    model.model.embedding.conv_tower.eval()
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert seen and all(s == (False, False) for s in seen)
    assert all(p.grad is None for p in model.parameters())


def test_early_stop_skips_later_blocks_and_head():
    model = grelu_model(n_transformers=3)
    blocks = model.model.embedding.transformer_tower.blocks
    later, head = CallCounter(blocks[2]), CallCounter(model.model.head)
    get_attention_scores(model, "ACGTAC", block_idx=1)
    assert later.n == 0 and head.n == 0
    get_attention_scores(model, "ACGTAC")
    assert later.n == 1 and head.n == 0


def test_global_state_restored_also_on_error():
    class Failing(SDPAModel):
        def forward(self, x):
            self.blocks[0](self.stem(x).transpose(1, 2))
            raise KeyError("boom")  # after the patched kernel was used, before the 2nd block

    torch.manual_seed(15)
    for model in (Failing(), TorchEncoderModel()):
        model.train()
        if isinstance(model, Failing):
            with pytest.raises(KeyError, match="boom"):
                get_attention_scores(model, "ACGTA", block_idx=2)
        else:
            get_attention_scores(model, "ACGTA")
        assert model.training and all(m.training for m in model.modules())
        assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention
        assert torch.backends.mha.get_fastpath_enabled()
    assert torch.get_float32_matmul_precision() == "highest"


def test_other_threads_are_not_captured():
    """While one call is capturing, SDPA calls from another thread pass straight through."""
    torch.manual_seed(16)
    model = SDPAModel(n_blocks=2)
    q = torch.randn(1, 2, 5, 4)
    expected = F.scaled_dot_product_attention(q, q, q)
    results = []

    def other():
        results.append(F.scaled_dot_product_attention(q, q, q))

    def run_other_thread(module, args):
        t = threading.Thread(target=other)
        t.start()
        t.join()

    hook = model.blocks[0].register_forward_pre_hook(run_other_thread)
    try:
        out = get_attention_scores(model, "ACGTACG")
    finally:
        hook.remove()
    assert out.shape == (2, 2, 7, 7)
    torch.testing.assert_close(results[0], expected)


def test_concurrent_calls_in_two_threads():
    """Two overlapping captures: each gets its own model's maps; every global is restored after."""
    torch.manual_seed(18)
    models = [SDPAModel(mask="causal").eval(), SDPAModel(mask="alibi").eval()]
    for m in models:
        m.blocks.append(TorchEncoderModel().encoder.layers[0])  # nn.MultiheadAttention too
    seqs = ["ACGTACGTA", "TTGACCANA"]
    expected = [get_attention_scores(m, seqs) for m in models]
    barrier = threading.Barrier(2, timeout=20)
    results, errors = [None, None], []

    def wait(module, args):
        barrier.wait()  # both threads are inside their capture here

    def run(k):
        try:
            results[k] = get_attention_scores(models[k], seqs)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    hooks = [m.blocks[1].register_forward_pre_hook(wait) for m in models]
    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h in hooks:
        h.remove()
    assert not errors, errors
    for k in range(2):
        np.testing.assert_array_equal(results[k], expected[k])
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention
    assert torch.backends.mha.get_fastpath_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("make", [lambda: grelu_model(seed=17), lambda: TorchEncoderModel().eval(),
                                  lambda: SDPAModel(mask="causal").eval()])
def test_cuda_model_matches_cpu(make):
    torch.manual_seed(17)
    model = make()
    seqs = random_seqs(np.random.default_rng(17), 3, 12)
    cpu = get_attention_scores(model, seqs)
    model.cuda()
    gpu = get_attention_scores(model, seqs)
    assert next(model.parameters()).is_cuda  # not moved back
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-4)
