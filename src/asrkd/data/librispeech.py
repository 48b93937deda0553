"""LibriSpeech-layout corpora -> lhotse cut manifests with stored fbank features.

Layout (openslr's, also used by `asrkd corpus`)::

    <root>/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <root>/<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   # "<utt-id> TEXT" per line

`prepare_librispeech` follows lhotse's recipe (`lhotse.recipes.librispeech`: one Recording and one
SupervisionSegment per transcript line, manifests named ``librispeech_{recordings,supervisions}_
<part>.jsonl.gz``) but does the scan itself, because the recipe only knows the official part names
under ``dataset_parts="auto"``, raises from inside its thread pool on an unreadable file and skips
missing audio with only a log line. Here every input is checked first (see `validate`) and each
problem is handled by a policy of `PrepareConfig`, so feature extraction only sees good audio.

Outputs in out_dir, per part: ``cuts_<part>.jsonl.gz`` (MonoCuts, one supervision each, features
(T, n_mels) in ``feats_<part>.lca``), ``prepare_<part>_report.json`` and the completion marker
``prepare_<part>.done`` that holds a hash of the config, so a second call with the same config
reuses the part and a changed one recomputes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from asrkd.config import PrepareConfig, to_dict
from asrkd.data.audio import fbank_extractor, load_mono
from asrkd.data.text import Tokenizer, normalize_text
from asrkd.data.validate import (
    AudioInfo,
    DataError,
    PrepareReport,
    ctc_min_frames,
    ctc_output_frames,
    probe_audio,
)
from asrkd.files import tree_files

__all__ = ["DataError", "cuts_path", "download_librispeech", "prepare_librispeech"]

logger = logging.getLogger(__name__)

PREPARE_VERSION = 1  # bump when the outputs of the same config change
KINDS = ("recordings", "supervisions")  # lhotse manifests written beside the cuts
OPENSLR_URL = "http://www.openslr.org/resources"


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    audio: Path  # the file features are computed from (a converted copy after resample/downmix)
    raw_text: str
    text: str = ""  # normalised
    speaker: str = ""
    seconds: float = 0.0


def cuts_path(out_dir: str | Path, part: str) -> Path:
    return Path(out_dir) / f"cuts_{part}.jsonl.gz"


def prepare_librispeech(
    root: str | Path,
    parts: Iterable[str],
    out_dir: str | Path,
    cfg: PrepareConfig,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Prepare each part of a LibriSpeech-layout corpus; returns part -> cuts manifest path.

    `root` holds the part folders (``root/<part>``); ``root/LibriSpeech/<part>`` (a download
    folder) is accepted too. Part names are free folder names. Raises DataError for a missing
    part, for a part left without usable utterances, and for any problem whose policy is "fail".
    """
    tokenizer = tokenizer or Tokenizer()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {}
    for part in parts:
        part_dir = _find_part(Path(root), part)
        key = config_hash(cfg, part, part_dir, tokenizer)
        build = partial(_prepare_part, part_dir, part, out_dir, cfg, tokenizer, progress)
        result[part] = prepare_once(out_dir, part, key, build)
    return result


def prepare_once(out_dir: Path, part: str, key: str, build: Callable[[], None]) -> Path:
    """cuts_path(out_dir, part), from `build()` unless the completion marker holds `key`."""
    marker = out_dir / f"prepare_{part}.done"
    if _is_done(marker, key, cuts_path(out_dir, part)):
        logger.info("%s: already prepared in %s, reusing", part, out_dir)
    else:
        build()
        marker.write_text(json.dumps({"hash": key, "part": part}) + "\n", encoding="utf-8")
    return cuts_path(out_dir, part)


def _find_part(root: Path, part: str) -> Path:
    for candidate in (root / part, root / "LibriSpeech" / part):
        if candidate.is_dir():
            return candidate.resolve()
    raise DataError(f"{root / part}: no such corpus part (expected <root>/{part}/<spk>/<chapter>/)")


def config_hash(
    cfg: PrepareConfig, part: str, part_dir: Path, tokenizer: Tokenizer, layout: str = "librispeech"
) -> str:
    data = {
        "cfg": to_dict(replace(cfg, num_jobs=1)),  # parallelism does not change the result
        "part": part,
        "source": str(part_dir),
        "symbols": list(tokenizer.symbols),
        "version": PREPARE_VERSION,
    }
    if layout != "librispeech":  # absent for LibriSpeech: its earlier markers stay valid
        data["layout"] = layout
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _is_done(marker: Path, key: str, cuts: Path) -> bool:
    try:
        return json.loads(marker.read_text(encoding="utf-8"))["hash"] == key and cuts.is_file()
    except (OSError, ValueError, KeyError):
        return False


def _prepare_part(
    part_dir: Path, part: str, out_dir: Path, cfg: PrepareConfig, tok: Tokenizer, progress: bool
) -> None:
    remove_outputs(out_dir, part)
    report = PrepareReport(part)
    utts = _read_transcripts(part_dir, cfg, report)
    utts = _check_texts(utts, cfg, tok, report)
    utts = check_audio(utts, cfg, tok, report, out_dir / f"converted_audio_{part}", progress)
    finish_part(utts, part_dir, out_dir, cfg, report, progress)


def finish_part(
    utts: list[Utterance],
    source: Path,
    out_dir: Path,
    cfg: PrepareConfig,
    report: PrepareReport,
    progress: bool,
    prefix: str = "librispeech",
) -> None:
    """The report, then the manifests (``<prefix>_{recordings,supervisions}_<part>``, cuts and
    features) of the utterances that passed every check; DataError when none did."""
    part = report.part
    report.n_cuts = len(utts)
    report.seconds = sum(u.seconds for u in utts)
    report.write(out_dir / f"prepare_{part}_report.json")
    logger.info("prepare %s", report.summary())
    if not utts:
        raise DataError(
            f"{source}: no usable utterances (see {out_dir / f'prepare_{part}_report.json'})"
        )
    _write_manifests(utts, part, out_dir, cfg, progress, prefix)


def remove_outputs(out_dir: Path, part: str) -> None:
    """Stale outputs of an earlier config; the marker goes first so a crash means 'redo'."""
    names = [
        f"prepare_{part}.done",
        f"cuts_{part}.jsonl.gz",
        f"cuts_{part}.tmp.jsonl.gz",
        f"feats_{part}.lca",
        f"feats_{part}",
        f"converted_audio_{part}",
        f"prepare_{part}_report.json",
    ]
    names += [f"{p}_{kind}_{part}.jsonl.gz" for p in ("librispeech", "audio") for kind in KINDS]
    for path in (out_dir / name for name in names):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _read_transcripts(part_dir: Path, cfg: PrepareConfig, report: PrepareReport) -> list[Utterance]:
    """One Utterance per transcript line whose audio exists; audio without text is reported."""
    files = tree_files(part_dir)  # links to speakers' or chapters' folders followed
    flacs = [p for p in files if p.suffix == ".flac"]
    report.n_audio_files = len(flacs)
    utts = []
    for trans in (p for p in files if p.name.endswith(".trans.txt")):
        for n, line in enumerate(trans.read_text(encoding="utf-8", errors="replace").splitlines()):
            if not line.strip():
                continue
            report.n_transcript_lines += 1
            utt_id, text = (line.split(maxsplit=1) + [""])[:2]
            audio = trans.parent / f"{utt_id}.flac"
            if audio.is_file():
                utts.append(Utterance(utt_id, audio, text.strip(), speaker=utt_id.split("-")[0]))
                continue
            reason = f"transcript line {n + 1} of {trans.name} ({utt_id}) has no audio file"
            report.handle(cfg, "on_bad_text", "missing_audio", audio, reason, utt_id)
    listed = {u.audio for u in utts}
    unlisted = defaultdict(list)
    for flac in flacs:
        if flac not in listed:
            unlisted[flac.parent].append(flac)
    for chapter, files in unlisted.items():
        if not any(chapter.glob("*.trans.txt")):
            reason = f"chapter has no *.trans.txt: its {len(files)} audio files have no text"
            report.handle(cfg, "on_bad_text", "missing_transcript", chapter, reason)
            continue
        for flac in files:
            reason = "audio file is not listed in its chapter's transcript"
            report.handle(cfg, "on_bad_text", "unlisted_audio", flac, reason, flac.stem)
    return utts


def _check_texts(
    utts: list[Utterance], cfg: PrepareConfig, tok: Tokenizer, report: PrepareReport
) -> list[Utterance]:
    """Duplicate ids, characters outside the vocabulary and empty transcripts."""
    by_id = defaultdict(list)
    for utt in utts:
        by_id[utt.utt_id].append(utt)
    kept = []
    for utt_id, same in by_id.items():
        if len(same) > 1:
            texts = {u.raw_text for u in same}
            verdict = "same text" if len(texts) == 1 else "different texts"
            reason = f"utterance id {utt_id} appears {len(same)} times ({verdict})"
            kept_one = "kept one copy" if len(texts) == 1 and cfg.on_bad_text == "skip" else ""
            report.handle(
                cfg, "on_bad_text", "duplicate_id", same[0].audio, reason, utt_id, kept_one
            )
            if len(texts) > 1:
                continue
        utt = _normalise(same[0], cfg, tok, report)
        if utt is None:
            continue
        if not utt.text:
            reason = f"empty transcript for {utt_id} (original: {utt.raw_text!r})"
            report.handle(cfg, "on_bad_text", "empty_text", utt.audio, reason, utt_id)
            continue
        kept.append(utt)
    return kept


def _normalise(
    utt: Utterance, cfg: PrepareConfig, tok: Tokenizer, report: PrepareReport
) -> Utterance | None:
    """Normalised text, or None when on_oov_chars=skip and the text has characters we can't
    spell. normalize_text alone would silently drop e.g. digits ("2 CATS" -> "cats")."""
    text = normalize_text(utt.raw_text)
    oov = _letters_outside(utt.raw_text, tok) | tok.oov_chars(text)
    if oov:
        chars = "".join(sorted(oov))
        reason = f"transcript of {utt.utt_id} has characters outside the vocabulary: {chars!r}"
        policy = report.handle(cfg, "on_oov_chars", "oov_chars", utt.audio, reason, utt.utt_id)
        if policy == "skip":
            return None
        vocab = set(tok.symbols)
        text = " ".join("".join(c for c in text if c in vocab).split())
    return replace(utt, text=text)


def _letters_outside(raw_text: str, tok: Tokenizer) -> set[str]:
    """Letters and digits (after folding case and accents) that the vocabulary lacks, and the
    replacement character that marks bytes of a transcript that were not UTF-8."""
    folded = unicodedata.normalize("NFKD", raw_text)
    folded = "".join(c for c in folded if not unicodedata.combining(c)).lower()
    vocab = set(tok.symbols)
    return {c for c in folded if (c.isalnum() or c == "\ufffd") and c not in vocab}


def check_audio(
    utts: list[Utterance],
    cfg: PrepareConfig,
    tok: Tokenizer,
    report: PrepareReport,
    convert_dir: Path,
    progress: bool,
) -> list[Utterance]:
    """Decode every file; resample / downmix / skip per policy; check durations against CTC."""
    kept = []
    for utt in tqdm(utts, desc="Checking audio", disable=not progress, leave=False):
        info = probe_audio(utt.audio)
        if isinstance(info, str):
            report.handle(cfg, "on_bad_audio", "bad_audio", utt.audio, info, utt.utt_id)
            continue
        utt = _fix_format(utt, info, cfg, report, convert_dir)
        if utt is None:
            continue
        utt = replace(utt, seconds=info.seconds)
        if _length_ok(utt, cfg, tok, report):
            kept.append(utt)
    return kept


def _fix_format(
    utt: Utterance, info: AudioInfo, cfg: PrepareConfig, report: PrepareReport, convert_dir: Path
) -> Utterance | None:
    """Sample rate and channels; a converted copy in convert_dir is what features see."""
    rate = cfg.features.sample_rate
    if info.sample_rate != rate:
        reason = f"sample rate {info.sample_rate} Hz, expected {rate} Hz"
        policy = report.handle(cfg, "on_wrong_rate", "wrong_rate", utt.audio, reason, utt.utt_id)
        if policy == "skip":
            return None
    if info.n_channels > 1:
        reason = f"{info.n_channels} channels, expected mono"
        kind = "multichannel"
        policy = report.handle(cfg, "on_multichannel", kind, utt.audio, reason, utt.utt_id)
        if policy == "skip":
            return None
    if info.sample_rate == rate and info.n_channels == 1:
        return utt
    converted = convert_dir / f"{utt.utt_id}.flac"
    convert_audio(utt.audio, converted, rate)
    return replace(utt, audio=converted)


def convert_audio(src: Path, dst: Path, sample_rate: int) -> None:
    """Write a mono FLAC copy of `src` at `sample_rate` (channel mean, sinc resampling)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    samples = np.clip(load_mono(src, sample_rate), -1.0, 1.0)
    sf.write(str(dst), samples, sample_rate, format="FLAC", subtype="PCM_16")


def _length_ok(utt: Utterance, cfg: PrepareConfig, tok: Tokenizer, report: PrepareReport) -> bool:
    if utt.seconds > cfg.max_seconds:
        reason = f"{utt.seconds:.1f} s is longer than prepare.max_seconds={cfg.max_seconds:g}"
        report.handle(cfg, "on_too_long", "too_long", utt.audio, reason, utt.utt_id)
        return False
    from lhotse.utils import compute_num_frames

    fc = cfg.features
    n_frames = compute_num_frames(utt.seconds, fc.frame_shift, fc.sample_rate)
    available, needed = ctc_output_frames(n_frames), ctc_min_frames(tok.encode(utt.text))
    rate = "4x"
    if fc.kind == "whisper":  # n // 160 frames; Whisper-encoder output_lengths: (T - 1) // 2 + 1
        n_frames = round(utt.seconds * fc.sample_rate) // round(fc.frame_shift * fc.sample_rate)
        available, rate = (n_frames - 1) // 2 + 1, "2x"
    if available < needed:
        reason = (
            f"{utt.seconds:.2f} s gives {available} CTC frames after {rate} subsampling, but its "
            f"transcript needs {needed} ({len(utt.text)} tokens + repeated characters)"
        )
        report.handle(cfg, "on_too_long", "too_short_for_ctc", utt.audio, reason, utt.utt_id)
        return False
    return True


def _write_manifests(
    utts: list[Utterance], part: str, out_dir: Path, cfg: PrepareConfig, progress: bool, prefix: str
) -> None:
    """Recordings and supervisions (lhotse recipe names), then cuts with stored features."""
    from lhotse import CutSet, MonoCut, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.audio import Recording

    recordings, supervisions = [], []
    for utt in utts:
        rec = Recording.from_file(utt.audio, recording_id=utt.utt_id)
        recordings.append(rec)
        supervisions.append(
            SupervisionSegment(
                id=utt.utt_id,
                recording_id=utt.utt_id,
                start=0.0,
                duration=rec.duration,
                channel=0,
                language="English",
                speaker=utt.speaker,
                text=utt.text,
                custom={"orig_text": utt.raw_text},
            )
        )
    recording_set = RecordingSet.from_recordings(recordings)
    supervision_set = SupervisionSet.from_segments(supervisions)
    recording_set.to_file(out_dir / f"{prefix}_recordings_{part}.jsonl.gz")
    supervision_set.to_file(out_dir / f"{prefix}_supervisions_{part}.jsonl.gz")
    cuts = CutSet.from_cuts(  # not from_manifests: that names cuts "<recording id>-0"
        MonoCut(sup.id, 0.0, rec.duration, 0, recording=rec, supervisions=[sup])
        for rec, sup in zip(recordings, supervisions)
    )
    cuts = _compute_features(cuts, out_dir / f"feats_{part}", cfg, progress)
    tmp = out_dir / f"cuts_{part}.tmp.jsonl.gz"
    cuts.sort_by_recording_id().to_file(tmp)
    tmp.replace(cuts_path(out_dir, part))


def _compute_features(cuts, storage_path: Path, cfg: PrepareConfig, progress: bool):
    """Fbank once, stored in a lilcom archive; a cut lhotse dropped is an error, not a gap."""
    import torch
    from lhotse import LilcomChunkyWriter

    extractor = fbank_extractor(cfg.features)
    storage = LilcomChunkyWriter
    if cfg.features.kind == "whisper":
        # Whisper's units are 4 log10 (9.2 nats): lilcom's default 2^-5 steps would quantise
        # them ~9x more coarsely than fbank's natural log; 2^-9 keeps the same precision.
        storage = functools.partial(LilcomChunkyWriter, tick_power=-9)
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    if cfg.num_jobs > 1:
        # The workers do the work, one thread each: lhotse spawns them, so they read
        # OMP_NUM_THREADS rather than inherit torch's setting; without it two workers on 2 cores
        # took 21 s instead of 11 s for the demo's 1.6 h (docs/benchmarks.md).
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    try:
        with_feats = cuts.compute_and_store_features(
            extractor=extractor,
            storage_path=storage_path,
            num_jobs=cfg.num_jobs,
            storage_type=storage,
            progress_bar=progress,
        ).to_eager()
    finally:
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp
    # lhotse skips a cut whose audio fails to load, with only a log line.
    lost = sorted(set(cuts.ids) - set(with_feats.ids))
    if lost:
        raise DataError(f"{storage_path}: feature extraction lost {len(lost)} cuts: {lost[:5]}")
    return with_feats


def download_librispeech(
    target_dir: str | Path, parts: Iterable[str], base_url: str = OPENSLR_URL
) -> Path:
    """Download and unpack LibriSpeech parts with lhotse's downloader; returns target/LibriSpeech.

    Archives are fetched from ``<base_url>/12/<part>.tar.gz`` (``/31/`` for Mini LibriSpeech's
    dev-clean-2 and train-clean-5). A partial archive left by an interrupted run is resumed with
    an HTTP Range request; an unpacked part is marked ``.completed`` and skipped next time. If the
    server ignored the Range request the resumed archive is corrupt: it is downloaded again from
    scratch once. Raises DataError for an unknown part or a failed download.
    """
    from lhotse.recipes import librispeech as recipe

    parts = list(parts)
    unknown = [p for p in parts if p not in recipe.LIBRISPEECH + recipe.MINI_LIBRISPEECH]
    if unknown:
        known = ", ".join(recipe.LIBRISPEECH + recipe.MINI_LIBRISPEECH)
        raise DataError(f"unknown LibriSpeech part(s) {', '.join(unknown)}; known: {known}")
    for part in parts:
        _download_part(recipe, Path(target_dir), part, base_url)
    return Path(target_dir) / "LibriSpeech"


def _download_part(recipe, target_dir: Path, part: str, base_url: str) -> None:
    import gzip
    import tarfile
    import urllib.error
    import zlib

    url = f"{base_url}/{'31' if part in recipe.MINI_LIBRISPEECH else '12'}/{part}.tar.gz"
    archive = target_dir / f"{part}.tar.gz"
    for attempt in ("resume", "from scratch"):
        try:
            recipe.download_librispeech(target_dir, [part], base_url=base_url)
            return
        except urllib.error.URLError as err:
            raise DataError(f"{url}: download failed ({err})") from err
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as err:
            logger.warning("%s: corrupt archive after %s (%s)", archive, attempt, err)
            # Not force_download=True: lhotse 1.33 deletes the file, then stats it and crashes.
            archive.unlink(missing_ok=True)
            last = err
    raise DataError(f"{archive}: corrupt archive from {url} even after a fresh download") from last
