"""CTC decoding."""

from __future__ import annotations

from torch import Tensor


def greedy_decode(logits: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks.

    logits (B, T', V), lengths (B,) -> one list of token ids per utterance.
    """
    best = logits.argmax(-1).tolist()
    out = []
    for path, n in zip(best, lengths.tolist()):
        ids, prev = [], None
        for tok in path[:n]:
            if tok != prev and tok != blank:
                ids.append(tok)
            prev = tok
        out.append(ids)
    return out
