"""Batches: collation and padding, SpecAugment, speaker splits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lhotse import CutSet

from asrkd.config import DataConfig
from asrkd.data.dataset import (
    collate,
    cut_text,
    load_cuts,
    speaker_of,
    split_by_speaker,
    strip_text,
)
from asrkd.data.text import Tokenizer

TOK = Tokenizer()


def test_collate_pads_features_and_targets(prepared_parts: dict[str, Path]) -> None:
    cuts = load_cuts(prepared_parts["dev"])
    group = sorted(cuts, key=lambda c: c.duration)[::3]  # different lengths
    batch = collate(CutSet.from_cuts(group), TOK)
    n = len(group)
    assert batch.cut_ids == [c.id for c in group]
    assert batch.feats.shape == (n, max(c.num_frames for c in group), 80)
    assert batch.feat_lens.tolist() == [c.num_frames for c in group]
    for i, cut in enumerate(group):
        feats = torch.from_numpy(cut.load_features())
        assert torch.equal(batch.feats[i, : cut.num_frames], feats)
        assert torch.all(batch.feats[i, cut.num_frames :] == 0)
        ids = TOK.encode(cut_text(cut))
        assert batch.target_lens[i] == len(ids) > 0
        assert batch.targets[i, : len(ids)].tolist() == ids
        assert torch.all(batch.targets[i, len(ids) :] == 0)
    assert batch.labelled.all()
    assert batch.audio_seconds == pytest.approx(sum(c.duration for c in group))


def test_collate_untranscribed_cuts(prepared_parts: dict[str, Path]) -> None:
    cuts = load_cuts(prepared_parts["dev"])
    first, second = list(cuts)[:2]
    mixed = CutSet.from_cuts([first] + list(strip_text(CutSet.from_cuts([second]))))
    batch = collate(mixed, TOK)
    assert batch.labelled.tolist() == [True, False]
    assert batch.target_lens[1] == 0 and torch.all(batch.targets[1] == 0)
    assert batch.feat_lens[1] == second.num_frames  # the audio stays


def padded_feats(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([300, 120, 41])
    feats = torch.randn(3, 300, 80, generator=g) + 5.0
    feats[torch.arange(300)[None, :] >= lens[:, None]] = 0.0
    return feats, lens


AUG = DataConfig(freq_mask_width=20, n_time_masks=3, time_mask_fraction=0.2)


def test_spec_augment_leaves_padding_lengths_and_input_alone() -> None:
    feats, lens = padded_feats()
    original = feats.clone()
    out = spec_augment_(feats, lens, seed=0)
    assert torch.equal(feats, original)  # a masked copy, not in place
    assert out.shape == feats.shape
    for i, n in enumerate(lens.tolist()):
        assert torch.all(out[i, n:] == 0)
        assert not torch.equal(out[i, :n], feats[i, :n])  # something was masked


def test_spec_augment_is_deterministic_for_a_seeded_generator() -> None:
    feats, lens = padded_feats()
    assert torch.equal(spec_augment_(feats, lens, 7), spec_augment_(feats, lens, 7))
    assert not torch.equal(spec_augment_(feats, lens, 7), spec_augment_(feats, lens, 8))


def test_spec_augment_masks_with_the_utterance_mean() -> None:
    feats, lens = padded_feats()
    out = spec_augment_(feats, lens, seed=3)
    for i, n in enumerate(lens.tolist()):
        changed = out[i, :n] != feats[i, :n]
        fill = feats[i, :n].mean()
        torch.testing.assert_close(out[i, :n][changed], fill.expand(int(changed.sum())))


def spec_augment_(feats: torch.Tensor, lens: torch.Tensor, seed: int) -> torch.Tensor:
    from asrkd.data.dataset import spec_augment

    return spec_augment(feats, lens, AUG, torch.Generator().manual_seed(seed))


def test_tempo_stretch_changes_lengths_keeps_each_frame_and_padding() -> None:
    from asrkd.data.dataset import tempo_stretch

    feats, lens = padded_feats()
    slow, slow_lens = tempo_stretch(feats, lens, 0.9)
    fast, fast_lens = tempo_stretch(feats, lens, 1.1)
    assert slow_lens.tolist() == [333, 133, 46] and fast_lens.tolist() == [273, 109, 37]
    assert slow.shape == (3, 333, 80) and fast.shape == (3, 273, 80)
    for out, new in ((slow, slow_lens), (fast, fast_lens)):
        for i, (n, m) in enumerate(zip(lens.tolist(), new.tolist())):
            assert torch.all(out[i, m:] == 0)
            # ends kept; every frame lies between two neighbouring input frames
            torch.testing.assert_close(out[i, 0], feats[i, 0])
            torch.testing.assert_close(out[i, m - 1], feats[i, n - 1])
            pos = torch.arange(m) * (n - 1) / (m - 1)
            left, frac = pos.floor().long(), (pos - pos.floor())[:, None]
            right = torch.clamp(left + 1, max=n - 1)
            expected = feats[i, left] * (1 - frac) + feats[i, right] * frac
            torch.testing.assert_close(out[i, :m], expected, rtol=1e-4, atol=1e-4)
    same, same_lens = tempo_stretch(feats, lens, 1.0)
    assert torch.equal(same, feats) and torch.equal(same_lens, lens)


def test_resample_frames_handles_one_frame_and_empty_rows() -> None:
    from asrkd.data.dataset import resample_frames

    x = torch.arange(12.0).reshape(2, 3, 2)
    out = resample_frames(x, torch.tensor([1, 0]), torch.tensor([3, 0]))
    assert out.shape == (2, 3, 2)
    assert torch.equal(out[0], x[0, :1].expand(3, 2)) and torch.all(out[1] == 0)


def test_tempo_range_is_validated() -> None:
    from asrkd.config import ConfigError

    DataConfig(tempo_range=(0.9, 1.1))
    for bad in ((1.1, 0.9), (0.3, 1.0), (1.0, 2.5), (1.0,)):
        with pytest.raises(ConfigError, match="tempo_range"):
            DataConfig(tempo_range=bad)


def test_split_by_speaker_is_deterministic_and_disjoint(prepared_parts: dict[str, Path]) -> None:
    cuts = load_cuts(prepared_parts["train"])
    labelled, unlabelled = split_by_speaker(cuts, 0.5, seed=0)
    again_l, again_u = split_by_speaker(cuts, 0.5, seed=0)
    assert sorted(labelled.ids) == sorted(again_l.ids)
    assert sorted(unlabelled.ids) == sorted(again_u.ids)
    spk_l = {speaker_of(c) for c in labelled}
    spk_u = {speaker_of(c) for c in unlabelled}
    assert len(spk_l) == 2 and len(spk_u) == 2 and not spk_l & spk_u  # 4 speakers, half each
    assert sorted(list(labelled.ids) + list(unlabelled.ids)) == sorted(cuts.ids)
    assert all(cut_text(c) for c in labelled)
    assert not any(cut_text(c) for c in unlabelled)  # untranscribed audio
    assert all(c.has_features for c in unlabelled)
    # The choice depends on the seed (some seed picks other speakers) and keeps >= 1 speaker.
    picks = {frozenset(speaker_of(c) for c in split_by_speaker(cuts, 0.5, s)[0]) for s in range(8)}
    assert len(picks) > 1
    assert len({speaker_of(c) for c in split_by_speaker(cuts, 0.01, 0)[0]}) == 1
