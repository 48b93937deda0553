"""Batches of precomputed features: duration-bucketed sampling, collation, SpecAugment.

Dimension legend: B batch, T frames, F mel bins, S target tokens.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asrkd.config import DataConfig, FeatureConfig
from asrkd.data.text import Tokenizer
from asrkd.data.validate import DataError
from asrkd.data.whisper_features import FEATURE_TYPE as WHISPER_FEATURES
from asrkd.data.whisper_features import n_frames_of as n_whisper_frames

if TYPE_CHECKING:  # torch and lhotse are imported where used: asrkd.lexicon imports cut_text
    import torch  # from here on the PyTorch-free path (asrkd.ondevice)
    from lhotse import CutSet
    from lhotse.dataset import DynamicBucketingSampler
    from torch import Tensor

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """feats (B, T, F) zero-padded, feat_lens (B,), targets (B, S) zero-padded, target_lens (B,),
    labelled (B,) bool: utterances with a transcript; cut_ids and durations (s) per utterance."""

    feats: Tensor
    feat_lens: Tensor
    targets: Tensor
    target_lens: Tensor
    labelled: Tensor
    cut_ids: list[str]
    durations: list[float]

    @property
    def audio_seconds(self) -> float:
        return float(sum(self.durations))

    def to(self, device: torch.device) -> Batch:
        move = {
            k: getattr(self, k).to(device)
            for k in ("feats", "feat_lens", "targets", "target_lens", "labelled")
        }
        return Batch(**move, cut_ids=self.cut_ids, durations=self.durations)


def load_cuts(path: str | Path) -> CutSet:
    """An eager CutSet whose cuts all carry features, or a DataError naming the file."""
    from lhotse import CutSet

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such cut manifest (run `asrkd prepare` first)")
    try:
        cuts = CutSet.from_file(path).to_eager()
    except Exception as err:  # lhotse raises many types for a broken manifest
        raise DataError(f"{path}: unreadable cut manifest ({err})") from err
    missing = [c.id for c in cuts if not c.has_features]
    if missing:
        raise DataError(f"{path}: {len(missing)} cuts have no features, e.g. {missing[0]}")
    return cuts


def cut_text(cut) -> str:
    """The cut's transcript ('' for unlabelled audio)."""
    return " ".join((s.text or "").strip() for s in cut.supervisions).strip()


def speaker_of(cut) -> str:
    sups = cut.supervisions
    return sups[0].speaker if sups and sups[0].speaker else cut.recording_id.split("-")[0]


def split_by_speaker(cuts: CutSet, fraction: float, seed: int) -> tuple[CutSet, CutSet]:
    """(labelled, unlabelled): the transcripts of a `fraction` of speakers, chosen by a hash of
    the speaker id and seed (stable across runs and machines); the rest as untranscribed audio."""
    speakers = sorted({speaker_of(c) for c in cuts})
    ranked = sorted(speakers, key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
    n_keep = max(1, round(fraction * len(speakers)))
    keep = set(ranked[:n_keep])
    labelled = cuts.filter(lambda c: speaker_of(c) in keep).to_eager()
    unlabelled = cuts.filter(lambda c: speaker_of(c) not in keep).to_eager()
    return labelled, strip_text(unlabelled)


def strip_text(cuts: CutSet) -> CutSet:
    """The same cuts with their transcripts removed (untranscribed audio)."""
    from lhotse import CutSet
    from lhotse.utils import fastcopy

    return CutSet.from_cuts(
        fastcopy(c, supervisions=[fastcopy(s, text="") for s in c.supervisions]) for c in cuts
    )


def make_sampler(
    cuts: CutSet, cfg: DataConfig, shuffle: bool, seed: int
) -> DynamicBucketingSampler:
    """Batches of at most cfg.max_batch_seconds of audio, grouped by duration."""
    from lhotse.dataset import DynamicBucketingSampler

    n_buckets = max(1, min(cfg.num_buckets, len(cuts) // 2))
    warnings.filterwarnings("ignore", "You are using DynamicBucketingSampler with an eagerly")
    return DynamicBucketingSampler(
        cuts,
        max_duration=cfg.max_batch_seconds,
        num_buckets=n_buckets,
        shuffle=shuffle,
        seed=seed,
        drop_last=False,
        # Every process of a data-parallel run sees every batch and trains on its share of it
        # (asrkd.distributed); lhotse would otherwise deal whole batches to the processes.
        world_size=1,
        rank=0,
    )


def batch_frames(cut) -> int:
    """Feature frames `collate` gives a cut: those stored, Whisper's cut to its n // 160 (lhotse
    stores round(n / 160), one more for a quarter of the utterances)."""
    if cut.features.type == WHISPER_FEATURES:
        return min(cut.num_frames, n_whisper_frames(cut.num_samples))
    return cut.num_frames


def collate(cuts: CutSet, tokenizer: Tokenizer) -> Batch:
    """Load features and encode transcripts of one batch of cuts."""
    import torch

    feats, ids, cut_ids, durations = [], [], [], []
    for cut in cuts:
        try:
            stored = cut.load_features()[: batch_frames(cut)]
            feats.append(torch.from_numpy(np.asarray(stored, dtype=np.float32)))
        except Exception as err:
            raise DataError(f"cut {cut.id}: cannot load its features ({err})") from err
        ids.append(tokenizer.encode(cut_text(cut)))
        cut_ids.append(cut.id)
        durations.append(float(cut.duration))
    feat_lens = torch.tensor([f.shape[0] for f in feats])
    padded = torch.zeros(len(feats), int(feat_lens.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        padded[i, : f.shape[0]] = f
    target_lens = torch.tensor([len(x) for x in ids])
    targets = torch.zeros(len(ids), max(1, int(target_lens.max())), dtype=torch.long)
    for i, x in enumerate(ids):
        targets[i, : len(x)] = torch.tensor(x, dtype=torch.long)
    return Batch(padded, feat_lens, targets, target_lens, target_lens > 0, cut_ids, durations)


def spec_augment(feats: Tensor, feat_lens: Tensor, cfg: DataConfig, gen: torch.Generator) -> Tensor:
    """Frequency and time masks (filled with each utterance's mean), drawn from `gen`.

    feats (B, T, F), feat_lens (B,) -> masked copy (B, T, F). Time masks stay inside each
    utterance's valid frames, so padding and lengths are untouched.
    """
    import torch

    out = feats.clone()
    n_freq = feats.shape[2]
    for i, n in enumerate(feat_lens.tolist()):
        fill = out[i, :n].mean()
        for _ in range(cfg.n_freq_masks):
            w = int(torch.randint(0, cfg.freq_mask_width + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, max(1, n_freq - w), (1,), generator=gen))
            out[i, :n, f0 : f0 + w] = fill
        max_w = int(cfg.time_mask_fraction * n)
        for _ in range(cfg.n_time_masks):
            w = int(torch.randint(0, max_w + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, max(1, n - w), (1,), generator=gen))
            out[i, t0 : t0 + w] = fill
    return out


def resample_frames(x: Tensor, lens: Tensor, new_lens: Tensor) -> Tensor:
    """Each utterance's valid frames stretched to its new length by linear interpolation.

    x (B, T, D), lens (B,), new_lens (B,) -> (B, max(new_lens), D), zero-padded. The first and
    last valid frames stay where they are (align_corners), so a stretch of the input and the same
    stretch of frame-level targets line up.
    """
    import torch.nn.functional as F

    out = x.new_zeros(x.shape[0], max(1, int(new_lens.max())), x.shape[2])
    for i, (n, m) in enumerate(zip(lens.tolist(), new_lens.tolist())):
        if n == m:
            out[i, :m] = x[i, :n]
        elif n > 0 and m > 0:
            y = F.interpolate(x[i, :n].T[None].float(), size=m, mode="linear", align_corners=True)
            out[i, :m] = y[0].T.to(x.dtype)
    return out


def tempo_stretch(feats: Tensor, feat_lens: Tensor, factor: float) -> tuple[Tensor, Tensor]:
    """Tempo perturbation on features: (B, T, F), (B,) -> the batch `factor` times faster.

    Every utterance's n frames become round(n / factor) (at least 1), interpolated along time: the
    spectral shape of each frame, i.e. the pitch, is kept (sox's `tempo`, not `speed`).
    """
    new_lens = stretched_lengths(feat_lens, factor)
    return resample_frames(feats, feat_lens, new_lens), new_lens


def stretched_lengths(feat_lens: Tensor, factor: float) -> Tensor:
    """(B,) frame counts -> those of tempo_stretch at `factor`: round(n / factor), at least 1
    (0 stays 0)."""
    import torch

    new_lens = torch.clamp(torch.round(feat_lens.double() / factor).long(), min=1)
    return torch.where(feat_lens > 0, new_lens, feat_lens)


def feature_config_of(cuts: CutSet) -> FeatureConfig:
    """The feature settings the cuts were prepared with (stored in every model file, so
    `transcribe` computes the same features from raw audio)."""
    feats = next(iter(cuts)).features
    extractor = feats.type
    kinds = {"kaldi-fbank": "fbank", "fbank": "fbank", WHISPER_FEATURES: "whisper"}
    if extractor not in kinds:
        raise DataError(f"cuts carry {extractor!r} features; asrkd models expect fbank")
    frame_length = FeatureConfig.frame_length
    return FeatureConfig(
        sample_rate=feats.sampling_rate,
        n_mels=feats.num_features,
        frame_shift=feats.frame_shift,
        frame_length=frame_length,
        kind=kinds[extractor],
    )


def duration_batches(cuts, batch_seconds: float) -> list[list]:
    """Cuts sorted by (duration, id) and grouped into batches of at most batch_seconds of audio
    (a single longer cut makes a batch of its own): deterministic, little padding."""
    out, current, total = [], [], 0.0
    for cut in sorted(cuts, key=lambda c: (c.duration, c.id)):
        if current and total + cut.duration > batch_seconds:
            out.append(current)
            current, total = [], 0.0
        current.append(cut)
        total += cut.duration
    return out + ([current] if current else [])
