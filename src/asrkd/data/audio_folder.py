"""Folders of untranscribed audio, in any layout -> lhotse cut manifests for `data.unlabelled_cuts`.

How users hold their own audio: a folder searched recursively for every file whose extension
names a format soundfile reads (FLAC, WAV, OGG, MP3, ...; other files are ignored). Each file
becomes one recording and one cut with an empty-text supervision, its id the file's path
relative to the folder without the extension, "/" written "__" (``spk1/ch2/utt.flac`` ->
``spk1__ch2__utt``), so ids are unique within a folder and stable across runs.

Everything else is `asrkd prepare librispeech`'s (asrkd.data.librispeech): the same PrepareConfig,
features computed and stored the same way, the same checks and policies for bad audio (unreadable
or zero-length -> on_bad_audio, wrong sample rate -> on_wrong_rate, several channels ->
on_multichannel, longer than max_seconds -> on_too_long), counted in the same report, and the
same completion marker. Outputs in out_dir, for part = the folder's name: ``cuts_<part>.jsonl.gz``,
``feats_<part>.lca``, ``audio_{recordings,supervisions}_<part>.jsonl.gz``,
``prepare_<part>_report.json`` and ``prepare_<part>.done``.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from pathlib import Path

import soundfile as sf

from asrkd.config import PrepareConfig
from asrkd.data.librispeech import (
    Utterance,
    check_audio,
    config_hash,
    finish_part,
    prepare_once,
    remove_outputs,
)
from asrkd.data.text import Tokenizer
from asrkd.data.validate import DataError, PrepareReport
from asrkd.files import tree_files

__all__ = ["prepare_audio_folder", "recording_id"]


def prepare_audio_folder(
    root: str | Path, out_dir: str | Path, cfg: PrepareConfig, progress: bool = True
) -> Path:
    """Prepare every audio file under `root` (recursively); returns the cuts manifest path.

    Raises DataError for a missing folder, for a folder left without usable audio, and for any
    problem whose policy is "fail".
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder of audio files")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    part = root.name
    # No transcripts: the tokenizer only checks that a cut has frames at all (0 labels).
    tok = Tokenizer()
    key = config_hash(cfg, part, root, tok, layout="audio")
    return prepare_once(out_dir, part, key, partial(_prepare, root, out_dir, cfg, tok, progress))


def recording_id(root: Path, path: Path) -> str:
    """The id of `path` under `root`: its relative path without extension, "/" -> "__"."""
    return "__".join(path.relative_to(root).with_suffix("").parts)


def _prepare(root: Path, out_dir: Path, cfg: PrepareConfig, tok: Tokenizer, progress: bool) -> None:
    part = root.name
    remove_outputs(out_dir, part)
    report = PrepareReport(part)
    utts = _scan(root, out_dir, cfg, report)
    utts = check_audio(utts, cfg, tok, report, out_dir / f"converted_audio_{part}", progress)
    finish_part(utts, root, out_dir, cfg, report, progress, prefix="audio")


def _scan(root: Path, out_dir: Path, cfg: PrepareConfig, report: PrepareReport) -> list[Utterance]:
    """One Utterance per audio file outside out_dir (converted copies live there); files whose
    ids collide (``a.wav`` beside ``a.flac``) are duplicates handled by prepare.on_bad_text, as
    LibriSpeech's duplicate ids are."""
    suffixes = {f".{name.lower()}" for name in sf.available_formats()}
    files = sorted(
        p
        for p in tree_files(root)  # links to folders followed
        if p.suffix.lower() in suffixes and p.is_file() and not p.is_relative_to(out_dir)
    )
    report.n_audio_files = len(files)
    by_id = defaultdict(list)
    for path in files:
        by_id[recording_id(root, path)].append(path)
    utts = []
    for utt_id, paths in by_id.items():
        if len(paths) > 1:
            names = ", ".join(str(p.relative_to(root)) for p in paths)
            reason = f"{len(paths)} files share the recording id {utt_id} ({names})"
            report.handle(cfg, "on_bad_text", "duplicate_id", paths[0], reason, utt_id)
            continue
        utts.append(Utterance(utt_id, paths[0], raw_text=""))
    return utts
