"""Small, randomly initialised attention models for tests/test_attention.py.

* :class:`ConvTransformerModel` follows the structure of gReLU's ``ConvTransformerModel`` that
  ``get_attention_scores`` relies on (``model.embedding.conv_tower``,
  ``model.embedding.transformer_tower.blocks``, each block with ``norm``, ``mha`` and a residual
  feed-forward); tests wrap it in ``_grelu_standins.StandInLightningModel`` like gReLU's
  ``LightningModel`` (``.model``, ``.activation``, ``.transform``, ``add_transform``,
  ``reset_transform``). The
  attention maths is written from the behaviour spec (grelu-score-behaviour.md, section 4.2):
  relative-position features with central-mask widths, content and position biases, Enformer's
  relative shift (pad-and-reshape), softmax over keys. gReLU itself is never imported.
* :class:`TorchEncoderModel` uses ``nn.TransformerEncoder`` / ``nn.MultiheadAttention``.
* :class:`KdimModel` uses an ``nn.MultiheadAttention`` with separate key and value sizes.
* :class:`SDPAModel` computes attention with ``F.scaled_dot_product_attention``.
* :class:`NoAttentionModel` has no attention at all.

Every model takes one-hot DNA (B, 4, L).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------
# gReLU-structured relative-position transformer (spec section 4.2)
# --------------------------------------------------------------------------------------------


def central_mask_features(length: int, n_features: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Relative-position features e(r) for r = -(length-1) .. length-1, shape (2*length-1, n_features).

    With F = n_features / 2, g = exp(ln(length + 1) / F) and widths w_m = g^m - 1 (m = 1..F):
    e(r)_m = 1[w_m > |r|] and e(r)_{F+m} = sign(r) * e(r)_m.
    """
    half = n_features // 2
    r = torch.arange(-length + 1, length, device=device).to(dtype)  # (2L-1,)
    g = math.exp(math.log(length + 1) / half)
    widths = torch.tensor([g**m - 1 for m in range(1, half + 1)], dtype=dtype, device=device)  # (F,)
    e = (widths[None, :] > r.abs()[:, None]).to(dtype)  # (2L-1, F)
    return torch.cat([e, torch.sign(r)[:, None] * e], dim=-1)  # (2L-1, 2F)


def shift_relative(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, 2L-1) logits against ascending offsets -> (B, H, L, L), column j of row i at offset j - i.

    Pad-and-reshape trick: prepend a zero column, view the rows with the other stride, drop the
    first row, and keep the first L columns.
    """
    b, h, n, m = x.shape  # m = 2n - 1
    x = torch.cat([torch.zeros_like(x[..., :1]), x], dim=-1)  # (B, H, n, 2n)
    x = x.reshape(b, h, m + 1, n)[:, :, 1:, :]  # (B, H, 2n - 1, n)
    return x.reshape(b, h, n, m)[..., :n]  # (B, H, n, n)


class RelPosAttention(nn.Module):
    """Multi-head attention with relative positions (gReLU's ``mha``), exposing ``get_attn_scores``."""

    def __init__(self, in_len: int, key_len: int, value_len: int, n_heads: int, n_pos_features: int,
                 pos_dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.in_len, self.key_len, self.value_len = in_len, key_len, value_len
        self.n_heads, self.n_pos_features = n_heads, n_pos_features
        self.to_q = nn.Linear(in_len, key_len * n_heads, bias=False)
        self.to_k = nn.Linear(in_len, key_len * n_heads, bias=False)
        self.to_v = nn.Linear(in_len, value_len * n_heads, bias=False)
        self.to_out = nn.Linear(value_len * n_heads, in_len)
        self.to_pos_k = nn.Linear(n_pos_features, key_len * n_heads, bias=False)
        self.rel_content_bias = nn.Parameter(torch.randn(1, n_heads, 1, key_len))
        self.rel_pos_bias = nn.Parameter(torch.randn(1, n_heads, 1, key_len))
        self.pos_dropout = nn.Dropout(pos_dropout)
        self.attn_dropout = nn.Dropout(attn_dropout)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.n_heads, -1).transpose(1, 2)  # (B, H, n, d)

    def get_attn_scores(self, x: torch.Tensor, return_v: bool = False):
        """x (B, L', C) -> attention probabilities (B, H, L', L') (and v (B, H, L', d_v))."""
        n = x.shape[1]
        q, k, v = self._heads(self.to_q(x)), self._heads(self.to_k(x)), self._heads(self.to_v(x))
        q = q / self.key_len**0.5
        content = (q + self.rel_content_bias) @ k.transpose(-1, -2)  # (B, H, n, n)
        pos = central_mask_features(n, self.n_pos_features, x.dtype, x.device)  # (2n-1, F_pos)
        pos_k = self.to_pos_k(self.pos_dropout(pos))  # (2n-1, H*d)
        pos_k = pos_k.reshape(2 * n - 1, self.n_heads, -1).transpose(0, 1)  # (H, 2n-1, d)
        pos_logits = shift_relative((q + self.rel_pos_bias) @ pos_k.transpose(-1, -2))  # (B, H, n, n)
        attn = self.attn_dropout((content + pos_logits).softmax(dim=-1))
        return (attn, v) if return_v else attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn, v = self.get_attn_scores(x, return_v=True)
        out = (attn @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)  # (B, n, H*d_v)
        return self.to_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.lin1 = nn.Linear(dim, 2 * dim)
        self.drop = nn.Dropout(dropout)
        self.lin2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        return self.lin2(self.drop(F.relu(self.lin1(self.norm(x)))))


class TransformerBlock(nn.Module):
    """x + dropout(mha(norm(x))), then x + ffn(x)."""

    def __init__(self, dim: int, n_heads: int, key_len: int, n_pos_features: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mha = RelPosAttention(dim, key_len, key_len, n_heads, n_pos_features, dropout, dropout)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(dim, dropout)

    def forward(self, x):  # (B, L', C)
        x = x + self.dropout(self.mha(self.norm(x)))
        return x + self.ffn(x)


class TransformerTower(nn.Module):
    """(B, C, L') -> blocks on (B, L', C) -> (B, C, L'), as gReLU's tower does."""

    def __init__(self, n_blocks: int, **kw):
        super().__init__()
        self.blocks = nn.ModuleList([TransformerBlock(**kw) for _ in range(n_blocks)])

    def forward(self, x):
        x = x.transpose(1, 2)  # (B, L', C)
        for block in self.blocks:
            x = block(x)
        return x.transpose(1, 2)


class ConvTower(nn.Module):
    """Stem conv, then n_conv conv+pool layers. With ``skips`` it returns (x, skip1, skip2) like Borzoi."""

    def __init__(self, channels: int, stem_kernel_size: int, n_conv: int, skips: bool = False):
        super().__init__()
        self.stem = nn.Conv1d(4, channels, stem_kernel_size, padding="same")
        self.convs = nn.ModuleList(
            [nn.Sequential(nn.Conv1d(channels, channels, 3, padding="same"), nn.GELU(), nn.MaxPool1d(2))
             for _ in range(n_conv)]
        )
        self.skips = skips

    def forward(self, x):  # (B, 4, L)
        x = self.stem(x)
        first = x
        for conv in self.convs:
            x = conv(x)
        return (x, first, first) if self.skips else x  # (B, C, L')


class Embedding(nn.Module):
    def __init__(self, conv_tower: nn.Module, transformer_tower: nn.Module):
        super().__init__()
        self.conv_tower = conv_tower
        self.transformer_tower = transformer_tower

    def forward(self, x):
        x = self.conv_tower(x)
        if isinstance(x, tuple):
            x = x[0]
        return self.transformer_tower(x)  # (B, C, L')


class Head(nn.Module):
    def __init__(self, channels: int, n_tasks: int):
        super().__init__()
        self.lin = nn.Conv1d(channels, n_tasks, 1)

    def forward(self, x):  # (B, C, L') -> (B, T, 1)
        return self.lin(x).mean(dim=-1, keepdim=True)


class ConvTransformerModel(nn.Module):
    """gReLU-like ConvTransformerModel: ``embedding.conv_tower``, ``embedding.transformer_tower.blocks``."""

    def __init__(self, n_tasks: int = 1, n_conv: int = 0, n_transformers: int = 2, stem_channels: int = 8,
                 stem_kernel_size: int = 1, n_heads: int = 2, n_pos_features: int = 4, key_len: int = 4,
                 dropout: float = 0.0, skips: bool = False):
        super().__init__()
        self.embedding = Embedding(
            ConvTower(stem_channels, stem_kernel_size, n_conv, skips),
            TransformerTower(n_transformers, dim=stem_channels, n_heads=n_heads, key_len=key_len,
                             n_pos_features=n_pos_features, dropout=dropout),
        )
        self.head = Head(stem_channels, n_tasks)

    def forward(self, x):
        return self.head(self.embedding(x))



# --------------------------------------------------------------------------------------------
# torch.nn attention
# --------------------------------------------------------------------------------------------


class TorchEncoderModel(nn.Module):
    """Conv stem, then ``nn.TransformerEncoder``; optional causal mask and sequence-first layout."""

    def __init__(self, dim: int = 8, n_heads: int = 2, n_layers: int = 2, batch_first: bool = True,
                 causal: bool = False, norm_first: bool = False, dropout: float = 0.1, pad_last: int = 0):
        super().__init__()
        self.stem = nn.Conv1d(4, dim, 3, padding=1)
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=2 * dim, dropout=dropout,
                                           batch_first=batch_first, norm_first=norm_first)
        # With a padding mask, torch's default nested-tensor conversion is kept on purpose.
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=pad_last > 0)
        self.head = nn.Linear(dim, 1)
        self.batch_first, self.causal, self.pad_last = batch_first, causal, pad_last

    def padding_mask(self, b: int, n: int, device=None) -> Optional[torch.Tensor]:
        """(B, L) True = padded key (the last ``pad_last`` positions), or None."""
        if not self.pad_last:
            return None
        mask = torch.zeros(b, n, dtype=torch.bool, device=device)
        mask[:, n - self.pad_last:] = True
        return mask

    def forward(self, x):  # (B, 4, L)
        h = self.stem(x).transpose(1, 2)  # (B, L, C)
        if not self.batch_first:
            h = h.transpose(0, 1)  # (L, B, C)
        mask = None
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(h.shape[1 if self.batch_first else 0])
            mask = mask.to(h.device, h.dtype)
        pad = self.padding_mask(x.shape[0], x.shape[-1], x.device)
        h = self.encoder(h, mask=mask, is_causal=self.causal, src_key_padding_mask=pad)
        if not self.batch_first:
            h = h.transpose(0, 1)
        return self.head(h).mean(dim=1)  # (B, 1)


class KdimModel(nn.Module):
    """One ``nn.MultiheadAttention`` with kdim != vdim != embed_dim and a key padding mask."""

    def __init__(self, dim: int = 8, kdim: int = 6, vdim: int = 5, n_heads: int = 2, pad_last: int = 1):
        super().__init__()
        self.stem = nn.Conv1d(4, dim, 3, padding=1)
        self.to_key = nn.Linear(dim, kdim)
        self.to_value = nn.Linear(dim, vdim)
        self.attn = nn.MultiheadAttention(dim, n_heads, kdim=kdim, vdim=vdim, batch_first=True)
        self.pad_last = pad_last

    def padding_mask(self, b: int, n: int, device) -> torch.Tensor:
        mask = torch.zeros(b, n, dtype=torch.bool, device=device)  # (B, S): True = ignored key
        if self.pad_last:
            mask[:, n - self.pad_last:] = True
        return mask

    def forward(self, x):
        h = self.stem(x).transpose(1, 2)  # (B, L, C)
        mask = self.padding_mask(h.shape[0], h.shape[1], h.device)
        out, _ = self.attn(h, self.to_key(h), self.to_value(h), key_padding_mask=mask, need_weights=False)
        return out.mean(dim=1)


# --------------------------------------------------------------------------------------------
# Fused attention: F.scaled_dot_product_attention
# --------------------------------------------------------------------------------------------


def alibi_bias(n_heads: int, n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """ALiBi-style additive bias (H, n, n): -slope_h * |i - j|."""
    slopes = torch.tensor([2.0 ** (-(h + 1)) for h in range(n_heads)], dtype=dtype, device=device)
    dist = (torch.arange(n, device=device)[:, None] - torch.arange(n, device=device)[None, :]).abs().to(dtype)
    return -slopes[:, None, None] * dist[None]


class SDPABlock(nn.Module):
    """Pre-norm block whose attention is one ``F.scaled_dot_product_attention`` call.

    mask: None, "causal" (is_causal=True), "alibi" (float additive bias) or "bool" (boolean mask
    hiding the last key). ``kv_heads`` < ``n_heads`` uses grouped-query attention (enable_gqa).
    """

    def __init__(self, dim: int, n_heads: int, mask: Optional[str] = None, scale: Optional[float] = None,
                 kv_heads: Optional[int] = None):
        super().__init__()
        self.n_heads, self.kv_heads = n_heads, kv_heads or n_heads
        self.head_dim = dim // n_heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * self.kv_heads * self.head_dim)
        self.to_out = nn.Linear(dim, dim)
        self.mask, self.scale = mask, scale

    def qk(self, x):
        """Normalised input x (B, n, C) -> q (B, H, n, d), k (B, H_kv, n, d), v (B, H_kv, n, d)."""
        b, n, _ = x.shape
        q = self.to_q(x).reshape(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.to_kv(x).reshape(b, n, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x):  # (B, n, C)
        b, n, c = x.shape
        q, k, v = self.qk(self.norm(x))
        kwargs = {}
        if self.mask == "causal":
            kwargs["is_causal"] = True
        elif self.mask == "alibi":
            kwargs["attn_mask"] = alibi_bias(self.n_heads, n, x.device, x.dtype)[None]  # (1, H, n, n)
        elif self.mask == "bool":
            keep = torch.ones(n, n, dtype=torch.bool, device=x.device)
            keep[:, -1] = False
            kwargs["attn_mask"] = keep
        if self.scale is not None:
            kwargs["scale"] = self.scale
        if self.kv_heads != self.n_heads:
            kwargs["enable_gqa"] = True
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)  # (B, H, n, d)
        return x + self.to_out(out.transpose(1, 2).reshape(b, n, c))


class SDPAModel(nn.Module):
    def __init__(self, dim: int = 8, n_heads: int = 2, n_blocks: int = 3, **block_kw):
        super().__init__()
        self.stem = nn.Conv1d(4, dim, 3, padding=1)
        self.blocks = nn.Sequential(*[SDPABlock(dim, n_heads, **block_kw) for _ in range(n_blocks)])
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x).transpose(1, 2))).mean(dim=1)


class NoAttentionModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 3, 5, padding=2)
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=-1))
