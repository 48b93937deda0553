"""Greedy CTC decoding on hand-made logits."""

from __future__ import annotations

import pytest
import torch

from asrkd.models.ctc import greedy_decode

pytestmark = pytest.mark.usefixtures("one_thread")

V = 5  # 0 = blank


def one_hot_logits(paths: list[list[int]]) -> torch.Tensor:
    """(B, T, V) logits whose argmax per frame is the given path (padded with blanks)."""
    t_max = max(len(p) for p in paths)
    logits = torch.zeros(len(paths), t_max, V)
    for b, path in enumerate(paths):
        for t, tok in enumerate(path):
            logits[b, t, tok] = 5.0
    return logits


def test_repeats_merged_and_blanks_dropped() -> None:
    logits = one_hot_logits([[0, 1, 1, 1, 0, 0, 2, 2, 3, 0]])
    assert greedy_decode(logits, torch.tensor([10])) == [[1, 2, 3]]


def test_repeat_across_a_blank_is_kept() -> None:
    logits = one_hot_logits([[1, 0, 1, 1, 0, 0, 1]])
    assert greedy_decode(logits, torch.tensor([7])) == [[1, 1, 1]]


def test_lengths_are_respected() -> None:
    # Frames beyond each utterance's length hold tokens that must not be decoded.
    logits = one_hot_logits([[2, 2, 0, 3, 4, 4], [1, 4, 4, 4, 4, 4], [3, 3, 3, 3, 3, 3]])
    assert greedy_decode(logits, torch.tensor([4, 1, 0])) == [[2, 3], [1], []]


def test_all_blank_and_other_blank_index() -> None:
    logits = one_hot_logits([[0, 0, 0], [4, 1, 4]])
    assert greedy_decode(logits, torch.tensor([3, 3])) == [[], [4, 1, 4]]
    assert greedy_decode(logits, torch.tensor([3, 3]), blank=4) == [[0], [1]]
