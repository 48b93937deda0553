"""Conformer-CTC models, their named presets and their checkpoint files."""

from __future__ import annotations

from asrkd.models.conformer import ConformerCTC, ConformerDims, ModelOutput, subsampled_lengths

# Named presets. LibriSpeech scale: a teacher in the 30 M-parameter class of Conformer-M and
# students at <= 40 % and <= 15 % of it. Embedded-corpus scale: sized for minutes on 2 CPU cores.
PRESETS: dict[str, ConformerDims] = {
    "conformer-m": ConformerDims(d_model=256, n_layers=16, n_heads=4, conv_kernel=31),
    "conformer-m-40": ConformerDims(d_model=192, n_layers=10, n_heads=4, conv_kernel=31),
    "conformer-m-15": ConformerDims(d_model=128, n_layers=9, n_heads=4, conv_kernel=31),
    # Narrow subsampling convolutions: at full width they would cost as much as the blocks.
    # Four blocks: on the demo's few-minute budget a deeper teacher leaves CTC's all-blank
    # plateau later and less stably (measured, docs/benchmarks.md).
    "demo-teacher": ConformerDims(
        d_model=144, n_layers=4, n_heads=4, conv_kernel=15, subsampling_channels=32
    ),
    "demo-student": ConformerDims(
        d_model=96, n_layers=4, n_heads=4, conv_kernel=15, subsampling_channels=32
    ),
    # The teacher's width with half its blocks (53 % of it): distill.init_from_teacher can copy
    # the teacher's subsampling, head and every other block into it.
    "demo-student-half": ConformerDims(
        d_model=144, n_layers=2, n_heads=4, conv_kernel=15, subsampling_channels=32
    ),
    "demo-student-xs": ConformerDims(
        d_model=64, n_layers=3, n_heads=4, conv_kernel=15, subsampling_channels=32
    ),
    # For tests: seconds to train on a handful of utterances.
    "tiny": ConformerDims(d_model=32, n_layers=2, n_heads=2, ff_mult=2, conv_kernel=7),
    "tiny-half": ConformerDims(d_model=32, n_layers=1, n_heads=2, ff_mult=2, conv_kernel=7),
    "tiny-xs": ConformerDims(d_model=16, n_layers=1, n_heads=2, ff_mult=2, conv_kernel=7),
}


def build_model(preset: str, vocab_size: int, n_mels: int, dropout: float) -> ConformerCTC:
    """A fresh model from a named preset, sized for the tokenizer and features in use."""
    import dataclasses

    dims = dataclasses.replace(
        PRESETS[preset], vocab_size=vocab_size, n_mels=n_mels, dropout=dropout
    )
    return ConformerCTC(dims)


__all__ = [
    "PRESETS",
    "ConformerCTC",
    "ConformerDims",
    "ModelOutput",
    "build_model",
    "subsampled_lengths",
]
