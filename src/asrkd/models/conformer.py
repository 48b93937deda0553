"""Conformer-CTC encoder: 4x convolutional subsampling, Conformer blocks with rotary position
information, and a linear CTC head.

Dimension legend: B batch, T input frames, T' = subsampled frames, F mel bins, D model width,
H attention heads, V vocabulary (CTC blank at index 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ConformerDims:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    n_mels: int = 80
    vocab_size: int = 29
    d_model: int = 144
    n_layers: int = 4
    n_heads: int = 4
    ff_mult: int = 4
    conv_kernel: int = 15
    subsampling_channels: int = 0  # 0 = d_model
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model must split into an even head size over n_heads")
        if self.conv_kernel % 2 == 0:
            raise ValueError("conv_kernel must be odd so frames stay aligned")


@dataclass
class ModelOutput:
    """logits (B, T', V) before softmax; lengths (B,) valid frames; hidden_states: one (B, T', D)
    tensor per block, in order (every model family returns this)."""

    logits: Tensor
    lengths: Tensor
    hidden_states: tuple[Tensor, ...]


def subsampled_lengths(lengths: Tensor) -> Tensor:
    """Valid output frames of the 4x subsampling for `lengths` input frames (two 3x3, stride 2,
    unpadded convolutions): ((T - 1) // 2 - 1) // 2, never below 0."""
    return torch.clamp(((lengths - 1) // 2 - 1) // 2, min=0)


def padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B, max_len) bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def attention_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T') bool, True on valid frames -> (B, 1, 1, T') additive attention mask: 0 on the
    keys to attend to, the dtype's lowest value on padding (padded queries are masked
    downstream).

    Additive rather than boolean for the exported graph: with a boolean mask the ONNX exporter
    guards every (B, H, T', T') score tensor against fully masked rows (IsNaN, Where), which
    onnxruntime keeps in memory (the recipe's int8 student: 212 -> 147 MB over its test
    utterances, docs/benchmarks.md). Finite rather than -inf, so that an utterance too short to
    keep a frame (a row without a valid key) gives finite values, never NaN; where a row has a
    valid key the results are the same to the bit as the boolean mask's in PyTorch."""
    zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return zeros.masked_fill(~mask, torch.finfo(dtype).min)[:, None, None, :]


def normalize_feats(feats: Tensor, feat_lens: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-utterance mean and variance normalisation of each mel bin over its valid frames;
    padding frames become 0. (B, T, F) -> (B, T, F). Part of the model, so a model file needs
    no separate statistics and is insensitive to recording level."""
    mask = padding_mask(feat_lens, feats.shape[1])[..., None]  # (B, T, 1)
    n = feat_lens.clamp(min=1)[:, None, None].to(feats.dtype)
    feats = feats.masked_fill(~mask, 0.0)
    mean = feats.sum(1, keepdim=True) / n
    var = ((feats - mean).masked_fill(~mask, 0.0) ** 2).sum(1, keepdim=True) / n
    return ((feats - mean) / (var + eps).sqrt()).masked_fill(~mask, 0.0)


class Subsampling(nn.Module):
    """(B, T, F) -> (B, T', D) with T' = subsampled_lengths(T)."""

    def __init__(self, n_mels: int, channels: int, d_model: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2),
            nn.ReLU(),
        )
        n_freq = ((n_mels - 1) // 2 - 1) // 2
        self.proj = nn.Linear(channels * n_freq, d_model)

    def forward(self, feats: Tensor) -> Tensor:
        x = self.conv(feats.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        return self.proj(x.transpose(1, 2).reshape(b, t, c * f))


def rotary_tables(n_frames: int, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos, sin tables (T', head_dim / 2) for rotary position embeddings."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device) / head_dim))
    angles = torch.arange(n_frames, device=device)[:, None].float() * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T', Dh) pairs of channels by position-dependent angles."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2)


# Dropout masks from 8-bit random integers: the drop probability is rounded to 1/256.
_MASK_LEVELS = 1 << 8


def dropout_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """A float mask of `shape`: 0 with probability p' = round(p * 256) / 256, else 1 / (1 - p').

    torch draws one random float per element for nn.Dropout (aten::bernoulli_); here one random
    64-bit word gives eight 8-bit draws, and one torch.where turns them into the scaled mask:
    ~3x less time per dropout layer (forward and backward) on CPU. Uses the global torch
    generator, so runs stay reproducible under a seed."""
    n = math.prod(shape)
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), (1 << 63) - 1)  # every bit random (one value of 2^64 missing)
    draws = words.view(torch.int8)[:n].view(shape)  # uniform over -128..127
    dropped = round(p * _MASK_LEVELS)
    scale = _MASK_LEVELS / (_MASK_LEVELS - dropped)
    return torch.where(draws >= dropped - _MASK_LEVELS // 2, scale, 0.0)


class Dropout(nn.Module):
    """Inverted dropout as nn.Dropout (same module state, no parameters), with the faster
    dropout_mask on CPU (p rounded to 1/256: 0.05 drops 13/256 = 5.08 %); other devices use
    torch's own kernel."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0 or round(p * _MASK_LEVELS) == _MASK_LEVELS:
            raise ValueError(f"dropout probability must be in [0, 1 - 1/512), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * dropout_mask(x.shape, self.p, x.device).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def pointwise(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """A kernel-1 Conv1d applied to channels-last x (B, T', D_in) -> (B, T', D_out): the same
    weights as a matrix product, which on CPU runs faster than the convolution and its
    backward, and needs no transposes."""
    return F.linear(x, conv.weight.squeeze(-1), conv.bias)


def depthwise(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """A depthwise Conv1d (groups = channels, odd kernel, "same" padding) applied to
    channels-last x (B, T', D) -> (B, T', D): the same weights run as a 2-D convolution on a
    (B, D, 1, T') view whose strides are already channels-last, so oneDNN needs none of the
    copies the 1-D call makes of the transposed input; ~2x faster forward and backward on CPU."""
    y = F.conv2d(
        x.transpose(1, 2).unsqueeze(2),
        conv.weight.unsqueeze(2),
        conv.bias,
        padding=(0, conv.padding[0]),
        groups=conv.groups,
    )
    return y.squeeze(2).transpose(1, 2)


def exported_mask(attn_mask: Tensor, n_queries: int) -> Tensor:
    """attn_mask (B, 1, 1, T') as it is, or while exporting to ONNX expanded to (B, 1, T', T'):
    from opset 23 the exporter writes ONNX's Attention op, whose onnxruntime kernel refuses a
    mask without the query axis and, given one, runs the recipe's int8 student's network 11-15 %
    faster over test-other's utterances than opset 18's MatMul and Softmax (27 % and ~30 MB
    less memory on a 23-s one; docs/benchmarks.md)."""
    if not torch.onnx.is_in_onnx_export():
        return attn_mask
    return attn_mask.expand(-1, -1, n_queries, -1)


def attention_with_dropout(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor, dropout: Dropout
) -> Tensor:
    """Scaled dot-product attention (B, H, T', Dh) -> (B, H, T', Dh) with `dropout` on the
    attention weights, as F.scaled_dot_product_attention(..., dropout_p=dropout.p) computes it;
    attn_mask (B, 1, 1, T') is additive (attention_bias). On CPU torch draws that dropout with
    aten::bernoulli_ (one random float per weight); this takes asrkd's cheaper masks."""
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    weights = (scores + attn_mask).softmax(dim=-1)
    return dropout(weights) @ v


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        b, t, d = x.shape
        qkv = self.qkv(self.norm(x)).view(b, t, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T', Dh)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        attn_mask = attention_bias(mask, q.dtype)
        if self.training and self.dropout.p > 0.0 and x.device.type == "cpu":
            y = attention_with_dropout(q, k, v, attn_mask, self.dropout)
        else:
            p = self.dropout.p if self.training else 0.0
            mask_q = exported_mask(attn_mask, t)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_q, dropout_p=p)
        return self.dropout(self.out(y.transpose(1, 2).reshape(b, t, d)))


class ConvModule(nn.Module):
    """Pointwise -> GLU -> depthwise -> LayerNorm -> SiLU -> pointwise. LayerNorm rather than
    BatchNorm so an utterance's output never depends on what else is in the batch."""

    def __init__(self, d_model: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.conv_norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Conv1d(d_model, d_model, 1)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        y = F.glu(pointwise(self.pointwise_in, self.norm(x)), dim=-1)  # (B, T', D)
        y = y.masked_fill(~mask[:, :, None], 0.0)  # padding must not leak into valid frames
        y = depthwise(self.depthwise, y)
        y = F.silu(self.conv_norm(y))
        return self.dropout(pointwise(self.pointwise_out, y))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, mult * d_model),
            nn.SiLU(),
            Dropout(dropout),
            nn.Linear(mult * d_model, d_model),
            Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConformerBlock(nn.Module):
    """Macaron block: half FF, self-attention, convolution, half FF, LayerNorm."""

    def __init__(self, dims: ConformerDims) -> None:
        super().__init__()
        d, p = dims.d_model, dims.dropout
        self.ff1 = FeedForward(d, dims.ff_mult, p)
        self.attn = SelfAttention(d, dims.n_heads, p)
        self.conv = ConvModule(d, dims.conv_kernel, p)
        self.ff2 = FeedForward(d, dims.ff_mult, p)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, mask: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn(x, mask, rope)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x)


class ConformerCTC(nn.Module):
    family = "conformer"

    def __init__(self, dims: ConformerDims) -> None:
        super().__init__()
        self.dims = dims
        channels = dims.subsampling_channels or dims.d_model
        self.subsampling = Subsampling(dims.n_mels, channels, dims.d_model)
        self.blocks = nn.ModuleList(ConformerBlock(dims) for _ in range(dims.n_layers))
        self.ctc_head = nn.Linear(dims.d_model, dims.vocab_size)

    @staticmethod
    def output_lengths(feat_lens: Tensor) -> Tensor:
        return subsampled_lengths(feat_lens)

    def forward(self, feats: Tensor, feat_lens: Tensor) -> ModelOutput:
        """feats (B, T, F) log-mel, feat_lens (B,) -> ModelOutput with T' = T // 4 roughly."""
        x = self.subsampling(normalize_feats(feats, feat_lens))
        lengths = subsampled_lengths(feat_lens)
        mask = padding_mask(lengths, x.shape[1])
        rope = rotary_tables(x.shape[1], self.dims.d_model // self.dims.n_heads, x.device)
        hidden = []
        for block in self.blocks:
            x = block(x, mask, rope)
            hidden.append(x)
        return ModelOutput(self.ctc_head(x), lengths, tuple(hidden))

    def intermediate_logits(self, hidden: Tensor) -> Tensor:
        """hidden (B, T', D), a block's output below the last -> (B, T', V) through the CTC
        head, as the last block's is (intermediate CTC, train.inter_ctc_weight)."""
        return self.ctc_head(hidden)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
