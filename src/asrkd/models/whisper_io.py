"""Pretrained Whisper weights, read into transformers' Whisper classes.

`load_whisper(path)` takes a Hugging Face Whisper folder (``save_pretrained``) or Hub id, or a
CTranslate2 Whisper folder (the format faster-whisper loads), and returns a
``transformers.WhisperForConditionalGeneration`` in eval mode. Needs ``asrkd[whisper]``.
"""

from __future__ import annotations

from pathlib import Path


def is_ct2_folder(path: str | Path) -> bool:
    """A CTranslate2 model folder: a ``model.bin`` beside a ``config.json``."""
    path = Path(path)
    return (path / "model.bin").is_file()


def load_whisper(path: str | Path):
    """A transformers WhisperForConditionalGeneration (fp32, eval mode) from an HF folder or
    Hub id, or from a CTranslate2 folder (TODO: CT2 reader)."""
    try:
        from transformers import WhisperForConditionalGeneration
    except ImportError as err:
        raise ImportError("Whisper needs transformers: pip install 'asrkd[whisper]'") from err
    if is_ct2_folder(path):
        raise NotImplementedError("CTranslate2 Whisper folders are read in a later change")
    return WhisperForConditionalGeneration.from_pretrained(str(path)).eval()
