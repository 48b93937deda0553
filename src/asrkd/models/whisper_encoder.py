"""Whisper-encoder CTC students: Whisper's audio encoder exactly (openai/whisper `AudioEncoder`,
transformers' `WhisperEncoder`) with a linear CTC head over the student's units.

conv1 (k3, p1) -> GELU -> conv2 (k3, stride 2, p1) -> GELU -> + sinusoidal positions ->
pre-LN transformer blocks (self-attention with q, k, v, out projections, k without bias; MLP
fc1 -> GELU -> fc2) -> final LayerNorm -> CTC head.

Unlike Whisper, inputs of any length: the positions are Whisper's sinusoid formula evaluated
for the frames present (never padded to 30 s; past Whisper's 1500 positions the formula simply
continues), and a key padding mask keeps padding of a batch out of every valid frame.
Parameter names follow transformers (blocks.i.self_attn.q_proj, ...), so Whisper weights copy
over one to one (asrkd.distill.student_init.init_from_whisper).

Dimension legend: B batch, T input frames (100 Hz), T' = (T - 1) // 2 + 1 output frames (50 Hz),
F mel bins, D model width, H attention heads, V vocabulary (CTC blank at index 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrkd.models.conformer import (
    Dropout,
    ModelOutput,
    attention_bias,
    exported_mask,
    padding_mask,
)

MAX_TIMESCALE = 10000  # Whisper's sinusoids(length, channels, max_timescale=10000)
WHISPER_POSITIONS = 1500  # 30 s of Whisper input: N_FRAMES // 2 = 3000 // 2


@dataclass(frozen=True)
class WhisperEncoderDims:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    n_mels: int = 80
    vocab_size: int = 29
    d_model: int = 384
    n_heads: int = 6
    n_layers: int = 4
    ffn_dim: int = 1536
    dropout: float = 0.1
    # The last block applied this many more times to its own output, with the same weights:
    # depth without parameters (ALBERT's sharing), at a block's compute per repeat.
    repeat_last: int = 0

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise ValueError("n_layers must be at least 1")
        if self.repeat_last < 0:
            raise ValueError("repeat_last must be >= 0")
        if self.d_model % self.n_heads:
            raise ValueError("d_model must split evenly over n_heads")
        if self.d_model % 2 or self.d_model < 4:
            raise ValueError("d_model must be even (sin and cos halves of the positions)")


def output_lengths(feat_lens: Tensor) -> Tensor:
    """Valid output frames for `feat_lens` input frames: conv2 (kernel 3, stride 2, padding 1)
    gives (T - 1) // 2 + 1; conv1 keeps T."""
    return (feat_lens - 1) // 2 + 1


def inv_timescales(d_model: int) -> Tensor:
    """(D / 2,) frequencies of Whisper's sinusoids, computed as whisper.model.sinusoids does."""
    increment = math.log(MAX_TIMESCALE) / (d_model // 2 - 1)
    return torch.exp(-increment * torch.arange(d_model // 2))


def sinusoids(n_frames: int, inv: Tensor) -> Tensor:
    """(n_frames, D) Whisper positions: [sin(t * inv), cos(t * inv)] for t = 0 .. n_frames - 1,
    whatever n_frames is (Whisper itself stops at 1500)."""
    scaled = torch.arange(n_frames, device=inv.device, dtype=inv.dtype)[:, None] * inv[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


class WhisperAttention(nn.Module):
    """Multi-head self-attention with Whisper's projections (k without bias)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """x (B, T', D), attn_mask (B, 1, 1, T') additive (attention_bias) -> (B, T', D)."""
        b, t, d = x.shape

        def heads(y: Tensor) -> Tensor:
            return y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=exported_mask(attn_mask, t))
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class WhisperBlock(nn.Module):
    """Pre-LN transformer block of Whisper's encoder (dropout where transformers has it)."""

    def __init__(self, dims: WhisperEncoderDims) -> None:
        super().__init__()
        d = dims.d_model
        self.self_attn = WhisperAttention(d, dims.n_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, dims.ffn_dim)
        self.fc2 = nn.Linear(dims.ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout = Dropout(dims.dropout)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), attn_mask))
        y = self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        return x + self.dropout(y)


class WhisperEncoderCTC(nn.Module):
    family = "whisper-encoder"

    def __init__(self, dims: WhisperEncoderDims) -> None:
        super().__init__()
        self.dims = dims
        d = dims.d_model
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        # A formula, not weights: non-persistent, so model files and Whisper init carry nothing.
        self.register_buffer("inv_timescales", inv_timescales(d), persistent=False)
        self.dropout = Dropout(dims.dropout)
        self.blocks = nn.ModuleList(WhisperBlock(dims) for _ in range(dims.n_layers))
        self.layer_norm = nn.LayerNorm(d)
        self.ctc_head = nn.Linear(d, dims.vocab_size)

    @staticmethod
    def output_lengths(feat_lens: Tensor) -> Tensor:
        return output_lengths(feat_lens)

    def embed(self, feats: Tensor, feat_lens: Tensor) -> Tensor:
        """feats (B, T, F) Whisper log-mel -> (B, T', D) convolutional front end + positions.
        Input and conv1 output are zeroed past each utterance's end, so conv2 sees there the
        zeros its own padding gives an utterance alone: valid frames never depend on padding."""
        mask = padding_mask(feat_lens, feats.shape[1])[:, None, :]  # (B, 1, T)
        x = feats.transpose(1, 2).masked_fill(~mask, 0.0)  # (B, F, T)
        x = F.gelu(self.conv1(x)).masked_fill(~mask, 0.0)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T', D)
        return x + sinusoids(x.shape[1], self.inv_timescales).to(x.dtype)

    def forward(self, feats: Tensor, feat_lens: Tensor) -> ModelOutput:
        """feats (B, T, F), feat_lens (B,) -> ModelOutput; hidden_states: each block's output,
        the last one after the final LayerNorm (the encoder output, as transformers reports)."""
        return self.forward_from(self.front(feats, feat_lens, 0), output_lengths(feat_lens), 0)

    def front(self, feats: Tensor, feat_lens: Tensor, n_blocks: int) -> Tensor:
        """feats (B, T, F), feat_lens (B,) -> (B, T', D): the front end and the first
        `n_blocks` blocks, what forward_from(..., start=n_blocks) continues from."""
        x = self.dropout(self.embed(feats, feat_lens))
        if n_blocks:
            attn_mask = attention_bias(padding_mask(output_lengths(feat_lens), x.shape[1]), x.dtype)
            for block in self.blocks[:n_blocks]:
                x = block(x, attn_mask)
        return x

    def forward_from(self, x: Tensor, lengths: Tensor, start: int) -> ModelOutput:
        """x (B, T', D): the input of block `start` (front(..., start)), lengths (B,) valid
        frames -> ModelOutput as forward's; hidden_states below block start - 1 are None (block
        start - 1's output is x itself). Valid frames never depend on what x holds past them."""
        attn_mask = attention_bias(padding_mask(lengths, x.shape[1]), x.dtype)
        hidden: list[Tensor | None] = [None] * max(0, start - 1) + ([x] if start else [])
        for block in self.blocks[start:]:
            x = block(x, attn_mask)
            hidden.append(x)
        for _ in range(self.dims.repeat_last):  # the last block's output: after its repeats
            x = self.blocks[-1](x, attn_mask)
        x = self.layer_norm(x)
        hidden[-1] = x
        return ModelOutput(self.ctc_head(x), lengths, tuple(hidden))

    def intermediate_logits(self, hidden: Tensor) -> Tensor:
        """hidden (B, T', D), a block's output below the last -> (B, T', V): read by the final
        LayerNorm and the CTC head, as the last block's is (intermediate CTC,
        train.inter_ctc_weight)."""
        return self.ctc_head(self.layer_norm(hidden))

    def frozen_front(self, frozen: set[nn.Parameter]) -> int | None:
        """How many blocks, above a frozen front end (conv1, conv2), are frozen from the input
        up (`frozen`: train.freeze's parameters); None when the front end is not frozen."""
        if not all(p in frozen for m in (self.conv1, self.conv2) for p in m.parameters()):
            return None
        n = 0
        while n < len(self.blocks) and all(p in frozen for p in self.blocks[n].parameters()):
            n += 1
        return n

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
