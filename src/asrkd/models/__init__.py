"""CTC models (one module per family), their named presets and their checkpoint files.

Every model class has `family` (its key in FAMILIES), `dims` (a frozen dataclass with at least
n_mels, vocab_size, d_model, n_layers, dropout), `output_lengths(feat_lens)` (valid output
frames for input frames) and `forward(feats, feat_lens) -> ModelOutput` with one hidden state per
block.
"""

from __future__ import annotations

import dataclasses

from asrkd.models.conformer import ConformerCTC, ConformerDims, ModelOutput, subsampled_lengths
from asrkd.models.whisper_encoder import WhisperEncoderCTC, WhisperEncoderDims

# family name -> (dims class, model class). A model file names its family; files written before
# families existed are Conformers.
FAMILIES: dict[str, tuple[type, type]] = {
    "conformer": (ConformerDims, ConformerCTC),
    "whisper-encoder": (WhisperEncoderDims, WhisperEncoderCTC),
}
DEFAULT_FAMILY = "conformer"
CTCModel = ConformerCTC | WhisperEncoderCTC  # for type hints

# Named presets. LibriSpeech scale: a teacher in the 30 M-parameter class of Conformer-M and
# students at <= 40 % and <= 15 % of it. Embedded-corpus scale: sized for minutes on 2 CPU cores.
PRESETS: dict[str, ConformerDims | WhisperEncoderDims] = {
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
    # Whisper-encoder students (features.kind=whisper): Whisper tiny's and base's width, heads and
    # MLP, so distill.init_from can copy a Whisper's front end and evenly spaced blocks (tiny
    # has 4 encoder blocks, base 6). 50 output frames per second.
    "whisper-tiny-enc2": WhisperEncoderDims(d_model=384, n_heads=6, n_layers=2, ffn_dim=1536),
    "whisper-tiny-enc4": WhisperEncoderDims(d_model=384, n_heads=6, n_layers=4, ffn_dim=1536),
    # tiny's four blocks and one more above them (9.4 M, 24.9 % of tiny.en): distill.init_from
    # starts the fifth as the identity (asrkd.distill.student_init.init_from_whisper)
    "whisper-tiny-enc5": WhisperEncoderDims(d_model=384, n_heads=6, n_layers=5, ffn_dim=1536),
    # the same weights as whisper-tiny-enc5, its fifth block applied twice (experimental)
    "whisper-tiny-enc5-r1": WhisperEncoderDims(
        d_model=384, n_heads=6, n_layers=5, ffn_dim=1536, repeat_last=1
    ),
    "whisper-base-enc2": WhisperEncoderDims(d_model=512, n_heads=8, n_layers=2, ffn_dim=2048),
    "whisper-base-enc4": WhisperEncoderDims(d_model=512, n_heads=8, n_layers=4, ffn_dim=2048),
    "whisper-base-enc6": WhisperEncoderDims(d_model=512, n_heads=8, n_layers=6, ffn_dim=2048),
    # For tests.
    "whisper-tiny-test": WhisperEncoderDims(d_model=32, n_heads=2, n_layers=2, ffn_dim=64),
    # The width of the tiny random Whisper the tests save (tests.helpers.write_tiny_whisper),
    # half its depth: a student it can initialise.
    "whisper-test-student": WhisperEncoderDims(d_model=64, n_heads=4, n_layers=1, ffn_dim=128),
}


def family_of_dims(dims) -> str:
    """The family whose dims class `dims` is."""
    return next(name for name, (cls, _) in FAMILIES.items() if isinstance(dims, cls))


def preset_family(preset: str) -> str:
    """The model family of a named preset."""
    return family_of_dims(PRESETS[preset])


def build_model(preset: str, vocab_size: int, n_mels: int, dropout: float) -> CTCModel:
    """A fresh model from a named preset, sized for the tokenizer and features in use."""
    dims = dataclasses.replace(
        PRESETS[preset], vocab_size=vocab_size, n_mels=n_mels, dropout=dropout
    )
    return FAMILIES[family_of_dims(dims)][1](dims)


def model_from_dims(family: str, dims: dict) -> CTCModel:
    """A fresh model of `family` from a dims dict (as a model file stores it)."""
    if family not in FAMILIES:
        raise KeyError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    dims_cls, model_cls = FAMILIES[family]
    return model_cls(dims_cls(**dims))


__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "PRESETS",
    "CTCModel",
    "ConformerCTC",
    "ConformerDims",
    "ModelOutput",
    "WhisperEncoderCTC",
    "WhisperEncoderDims",
    "build_model",
    "family_of_dims",
    "model_from_dims",
    "preset_family",
    "subsampled_lengths",
]
