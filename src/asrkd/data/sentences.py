"""Random sentences over a 3,000-word list, so a recogniser must spell rather than recall phrases.

Words are drawn from a mixture of a Zipf-like law over the list's frequency ranks (so function words
are common, as in real text) and a uniform law (so the rare end of the list is still covered).
Transcripts are upper case, like LibriSpeech's.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

ZIPF_EXPONENT = 1.0  # word frequency ~ 1 / rank, Zipf's law for English


@lru_cache(maxsize=1)
def load_words() -> tuple[str, ...]:
    """The packaged word list (src/asrkd/data/words.txt), most frequent first."""
    text = resources.files("asrkd.data").joinpath("words.txt").read_text(encoding="utf-8")
    return tuple(w for w in (line.strip() for line in text.splitlines()) if w and w[0] != "#")


@lru_cache(maxsize=8)
def word_probabilities(n_words: int, zipf_share: float) -> np.ndarray:
    """Sampling probability of each rank: `zipf_share` Zipf plus the rest uniform; sums to 1."""
    zipf = 1.0 / np.arange(1, n_words + 1) ** ZIPF_EXPONENT
    return zipf_share * zipf / zipf.sum() + (1.0 - zipf_share) / n_words


def sample_sentence(
    rng: np.random.Generator,
    words: tuple[str, ...],
    min_words: int,
    max_words: int,
    zipf_share: float,
) -> str:
    """One upper-case sentence of min_words..max_words words (inclusive)."""
    n = int(rng.integers(min_words, max_words + 1))
    idx = rng.choice(len(words), size=n, p=word_probabilities(len(words), zipf_share))
    return " ".join(words[i] for i in idx).upper()
