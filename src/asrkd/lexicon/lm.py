"""Word LMs as the lexicon search scores them: a unigram, a bigram of context words and a
trigram's word triples (WordLM, WordTriples); where they come from: asrkd.lexicon.sources;
the formulas: asrkd.lexicon."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from asrkd.data.text import normalize_text, word_counts

SENTENCE_START = "<s>"  # the context of an utterance's first word (no transcript word has "<")


def _word_ids(words: Iterable[str]) -> dict[str, int]:
    """word -> its position in `words`, and SENTENCE_START -> the number of words (the ids of
    WordTriples)."""
    ids = {w: i for i, w in enumerate(words)}
    ids[SENTENCE_START] = len(ids)
    return ids


def _first_ids(names: list[str]) -> dict[str, int]:
    """name -> the id of its first spelling, for a Sphinx LM's normalised words (_sphinx_names;
    '' left out): a context spelt two ways keeps its first spelling's n-grams."""
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name:
            first.setdefault(name, i)
    return first


@dataclass(frozen=True, eq=False)
class WordTriples:
    """A trigram's listed word triples (u, v, w) over a bigram, as numpy arrays: the 1.6 M
    triples of CMU Sphinx's LM take ~30 MB so, where Python dicts took several hundred. C contexts,
    R triples. P(w | u, v) = seen + exp(backoff) P_bigram(w | v), seen 0 for a word the context
    does not list; a context (u, v) not listed backs off to P_bigram(w | v) whole.

    words: the vocabulary, word id = position; SENTENCE_START has id len(words) (a context only).
    context: (C,) int64 keys u * (len(words) + 1) + v, increasing; backoff: (C,) float64 log b.
    start: (C + 1,) int64: context c's triples are rows start[c]:start[c + 1] of
    word: (R,) int64 ids, increasing within a context, and seen: (R,) float64."""

    words: tuple[str, ...]
    context: np.ndarray
    backoff: np.ndarray
    start: np.ndarray
    word: np.ndarray
    seen: np.ndarray

    @functools.cached_property
    def ids(self) -> dict[str, int]:
        """word -> id, SENTENCE_START included."""
        return _word_ids(self.words)

    def __len__(self) -> int:
        return len(self.word)

    def lookup(self, u: str, v: str, w: str) -> tuple[float, float] | None:
        """(log b(u v), seen(u v w)) for a context the triples list (seen 0.0 where w is not
        listed after it), else None."""
        ids, base = self.ids, len(self.words) + 1
        if u not in ids or v not in ids or w not in ids:
            return None
        key = ids[u] * base + ids[v]
        c = int(np.searchsorted(self.context, key))
        if c == len(self.context) or self.context[c] != key:
            return None
        lo, hi = int(self.start[c]), int(self.start[c + 1])
        i = lo + int(np.searchsorted(self.word[lo:hi], ids[w]))
        seen = float(self.seen[i]) if i < hi and self.word[i] == ids[w] else 0.0
        return float(self.backoff[c]), seen

    def rows(self) -> Iterator[tuple[str, str, float, list[tuple[str, float]]]]:
        """(u, v, log b(u v), [(w, seen)]) per context, in key order."""
        words = (*self.words, SENTENCE_START)
        base = len(self.words) + 1
        word, seen, start = self.word.tolist(), self.seen.tolist(), self.start.tolist()
        for c, (key, b) in enumerate(zip(self.context.tolist(), self.backoff.tolist())):
            lo, hi = start[c], start[c + 1]
            listed = [(words[i], p) for i, p in zip(word[lo:hi], seen[lo:hi])]
            yield words[key // base], words[key % base], b, listed

    @classmethod
    def from_arrays(
        cls,
        words: tuple[str, ...],
        ids: np.ndarray,
        probs: np.ndarray,
        contexts: Mapping[tuple[int, int], float] | None = None,
    ) -> WordTriples:
        """Triples from (R, 3) word ids (u, v, w; SENTENCE_START = len(words)) and their listed
        share `probs` (R,) (rows of the same triple add up). contexts: log b(u v) by (u, v)
        ids; None: each context's rest of the mass, b = 1 - the listed shares (a sliver where
        they take it all: the listed shares are scaled to leave 1e-6), as sphinx_bigram does."""
        base = len(words) + 1
        ids = np.asarray(ids, dtype=np.int64).reshape(-1, 3)
        keys = (ids[:, 0] * base + ids[:, 1]) * base + ids[:, 2]
        keys, inverse = np.unique(keys, return_inverse=True)
        seen = np.bincount(inverse.ravel(), weights=probs, minlength=len(keys))
        row_context, word = keys // base, keys % base
        context = np.unique(row_context)
        if contexts is not None:
            given = np.array([u * base + v for u, v in contexts], dtype=np.int64)
            context = np.union1d(context, given)
        start = np.searchsorted(row_context, np.append(context, np.iinfo(np.int64).max))
        if contexts is None:
            mass = np.add.reduceat(seen, start[:-1]) if len(seen) else np.zeros(0)
            rest = 1.0 - mass
            full = rest <= 1e-9
            if full.any():
                scale = np.repeat(np.where(full, (1 - 1e-6) / mass, 1.0), np.diff(start))
                seen, rest = seen * scale, np.where(full, 1e-6, rest)
            backoff = np.log(rest)
        else:
            by_key = dict(zip(given.tolist(), contexts.values()))
            backoff = np.array([by_key.get(k, 0.0) for k in context.tolist()])
        return cls(words, context, backoff, start.astype(np.int64), word, seen)


@dataclass(frozen=True)
class WordLM:
    """Unigram log probabilities of a closed vocabulary (relative frequencies) and, for a
    bigram, per context word: (log(1 - λ_v), {word seen after it: λ_v * P_ML(word | v)})."""

    log_probs: dict[str, float]
    contexts: dict[str, tuple[float, dict[str, float]]] = field(default_factory=dict)
    triples: WordTriples | None = None  # a trigram's word triples over the bigram (lm_order 3)

    @classmethod
    def from_texts(cls, texts: Iterable[str], order: int = 1) -> WordLM:
        texts = list(texts)
        counts = word_counts(texts)
        if not counts:
            raise ValueError("no words to build a lexicon from")
        lm = cls.from_counts(counts)
        return lm.with_bigrams(texts) if order == 2 else lm

    def with_bigrams(self, texts: Iterable[str]) -> WordLM:
        """This LM as the lower order of a Witten-Bell bigram counted in `texts`."""
        pairs: dict[str, dict[str, int]] = {}
        for text in texts:
            words = [SENTENCE_START, *normalize_text(text).split()]
            for prev, word in pairwise(words):
                after = pairs.setdefault(prev, {})
                after[word] = after.get(word, 0) + 1
        contexts = {}
        for prev, after in sorted(pairs.items()):
            n, types = sum(after.values()), len(after)
            lam = n / (n + types)
            seen = {w: lam * c / n for w, c in sorted(after.items()) if w in self.log_probs}
            contexts[prev] = (math.log(1 - lam), seen)
        return WordLM(self.log_probs, contexts)

    @property
    def order(self) -> int:
        return 3 if self.triples is not None else 2 if self.contexts else 1

    def next_score(self, words: tuple[str, ...], word: str) -> float:
        """log P(word | the words before it in the utterance), as far back as the LM's order
        looks: P(w | u, v) = seen(u v w) + b(u v) P(w | v) for a trigram context (u, v) the
        triples list (u: SENTENCE_START for the second word), else P(w | v)."""
        prev = words[-1] if words else SENTENCE_START
        bigram = self.score(prev, word)
        if self.triples is None or not words:
            return bigram
        found = self.triples.lookup(words[-2] if len(words) > 1 else SENTENCE_START, prev, word)
        if found is None:
            return bigram
        backoff, seen = found
        return math.log(seen + math.exp(backoff + bigram)) if seen else backoff + bigram

    def score(self, prev: str, word: str) -> float:
        """log P(word | prev) (prev: the previous word or SENTENCE_START); the unigram's
        log P(word) without bigram contexts."""
        unigram = self.log_probs[word]
        context = self.contexts.get(prev)
        if context is None:
            return unigram
        backoff, seen = context
        p = seen.get(word)
        return backoff + unigram if p is None else math.log(p + math.exp(backoff + unigram))

    def over(self, lower: WordLM) -> WordLM:
        """This LM's bigram interpolated over `lower`'s bigram (same vocabulary) instead of over
        the unigram: P(w | v) = λ_v P_ML(w | v) + (1 - λ_v) P_lower(w | v) for the contexts this
        LM has, P_lower elsewhere. Normalised when both are. Bigrams only (triples come last)."""
        if self.triples is not None or lower.triples is not None:
            raise ValueError("WordLM.over joins bigrams: add the triples after (sphinx_trigram)")
        contexts = dict(lower.contexts)
        for prev, (backoff, seen) in self.contexts.items():
            low_backoff, low_seen = lower.contexts.get(prev, (0.0, {}))
            rest = math.exp(backoff)
            merged = {w: rest * p for w, p in low_seen.items()}
            for w, p in seen.items():
                merged[w] = merged.get(w, 0.0) + p
            contexts[prev] = (backoff + low_backoff, dict(sorted(merged.items())))
        return WordLM(self.log_probs, dict(sorted(contexts.items())))

    @classmethod
    def from_counts(cls, counts: Mapping[str, float]) -> WordLM:
        """Relative frequencies of positive counts (or frequencies)."""
        total = sum(counts.values())
        return cls({w: math.log(c / total) for w, c in sorted(counts.items())})

    def mix(self, other: WordLM, weight: float) -> WordLM:
        """Linear interpolation (1 - weight) * self + weight * other of the unigrams over both
        vocabularies; self's bigram contexts are kept and back off to the mixed unigram."""
        if self.triples is not None:
            raise ValueError("WordLM.mix mixes unigrams: add the triples after (sphinx_trigram)")
        probs = {w: (1 - weight) * math.exp(lp) for w, lp in self.log_probs.items()}
        for w, lp in other.log_probs.items():
            probs[w] = probs.get(w, 0.0) + weight * math.exp(lp)
        return WordLM({w: math.log(p) for w, p in sorted(probs.items())}, self.contexts)

    def to_json(self) -> dict:
        """{"log_probs", "contexts"} for a file's metadata (from_json reads it back); a
        trigram's triples travel as ARPA text only (ArpaSource)."""
        if self.triples is not None:
            raise ValueError("a trigram LM is stored as ARPA text (ArpaSource), not as JSON")
        contexts = {v: [b, seen] for v, (b, seen) in self.contexts.items()}
        return {"log_probs": self.log_probs, "contexts": contexts}

    @classmethod
    def from_json(cls, data: Mapping) -> WordLM:
        contexts = {v: (float(b), dict(seen)) for v, (b, seen) in data.get("contexts", {}).items()}
        return cls(dict(data["log_probs"]), contexts)
