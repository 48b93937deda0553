"""Checks on corpus input and the policy that decides what happens to a bad file.

Every problem is recorded with the file, the reason and the action taken, so `prepare` can end
with a summary and a report file; the "fail" policy raises `DataError` naming the file instead.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from asrkd.config import PrepareConfig

logger = logging.getLogger(__name__)

# What a non-"fail" policy does to the utterance, as written in the report.
ACTIONS = {
    "skip": "skipped",
    "drop": "dropped characters",
    "resample": "resampled",
    "downmix": "downmixed",
}


class DataError(ValueError):
    """Corpus input that the configured policy does not accept; the message names the file."""


@dataclass(frozen=True)
class Problem:
    kind: str  # e.g. bad_audio, wrong_rate, missing_audio, duplicate_id
    path: str
    reason: str
    action: str
    utt_id: str = ""


@dataclass
class PrepareReport:
    """What `prepare` saw in one part, and every problem it met."""

    part: str
    n_transcript_lines: int = 0
    n_audio_files: int = 0
    n_cuts: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    def handle(
        self,
        cfg: PrepareConfig,
        policy_name: str,
        kind: str,
        path: Path | str,
        reason: str,
        utt_id: str = "",
        action: str = "",
    ) -> str:
        """Apply the policy `cfg.<policy_name>` to a problem: record it, or raise DataError.

        Returns the policy; `action` overrides the reported action when the caller does
        something milder than the policy says (e.g. keeps one of two identical lines).
        """
        policy = getattr(cfg, policy_name)
        if policy == "fail":
            raise DataError(f"{path}: {reason} (prepare.{policy_name}=fail)")
        action = action or ACTIONS[policy]
        self.problems.append(Problem(kind, str(path), reason, action, utt_id))
        logger.warning("%s: %s -> %s (prepare.%s)", path, reason, action, policy_name)
        return policy

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def summary(self) -> str:
        lost = sum(p.action == "skipped" for p in self.problems)
        kinds = ", ".join(f"{k}={n}" for k, n in sorted(self.counts().items())) or "none"
        return (
            f"{self.part}: {self.n_cuts} cuts ({self.seconds / 3600:.2f} h) from "
            f"{self.n_transcript_lines} transcript lines and {self.n_audio_files} audio files; "
            f"{len(self.problems)} problems ({kinds}); {lost} skipped; "
            f"{self.n_audio_files - self.n_cuts} audio files unused"
        )

    def write(self, path: Path) -> None:
        data = {
            "part": self.part,
            "n_transcript_lines": self.n_transcript_lines,
            "n_audio_files": self.n_audio_files,
            "n_cuts": self.n_cuts,
            "hours": round(self.seconds / 3600, 4),
            "counts": self.counts(),
            "n_skipped": sum(p.action == "skipped" for p in self.problems),
            "n_audio_files_unused": self.n_audio_files - self.n_cuts,
            "problems": [asdict(p) for p in self.problems],
        }
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    n_channels: int
    n_samples: int

    @property
    def seconds(self) -> float:
        return self.n_samples / self.sample_rate


def probe_audio(path: Path) -> AudioInfo | str:
    """Decode a whole file; its AudioInfo, or the reason it is unusable.

    The header alone is not enough: a truncated FLAC keeps the sample count of its STREAMINFO
    header, so only a full decode shows the missing samples (or a decoder error).
    """
    if path.stat().st_size == 0:
        return "zero-length file (0 bytes)"
    try:
        info = sf.info(str(path))
        audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError, EOFError) as err:  # libsndfile's errors vary
        return f"unreadable audio ({type(err).__name__}: {str(err).strip()})"
    if audio.shape[0] == 0:
        return "zero-length audio (no samples)"
    if info.frames > 0 and audio.shape[0] < info.frames:
        return f"truncated audio: decoded {audio.shape[0]} of {info.frames} samples"
    if not np.isfinite(audio).all():
        return "audio contains NaN or infinite samples"
    return AudioInfo(int(info.samplerate), int(audio.shape[1]), int(audio.shape[0]))


def ctc_output_frames(n_frames: int) -> int:
    """Encoder frames after 4x convolutional subsampling (two stride-2 convs, kernel 3)."""
    return ((n_frames - 1) // 2 - 1) // 2


def ctc_min_frames(token_ids: list[int]) -> int:
    """Frames CTC needs for a label sequence: one per token plus a blank between repeats."""
    repeats = sum(a == b for a, b in itertools.pairwise(token_ids))
    return len(token_ids) + repeats
