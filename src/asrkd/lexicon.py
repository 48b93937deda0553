"""Lexicon-constrained CTC prefix beam search with a unigram, bigram or trigram word LM.

Greedy CTC decoding spells freely, so a model that gets most letters right still misspells most
words. This decoder only lets hypotheses spell words of a closed vocabulary and scores each
completed word with `lm_weight * log P(word | previous word) + word_bonus`. A unigram model is
exact for the embedded corpus, whose words are drawn independently; on real text it is the weakest
useful LM. Words outside the vocabulary cannot be recognised (their share is the OOV rate, which
`evaluate` reports).

Bigram (`lm_order` 2, in `eval` and `export`), from the word pairs `bigrams` names:
- "train": word pairs counted in the "train" transcripts (the sentence start counts as the context
  "<s>"), Witten-Bell interpolated with the unigram of the whole vocabulary:
  P(w | v) = λ_v P_ML(w | v) + (1 - λ_v) P(w), λ_v = c(v) / (c(v) + N1+(v)), with N1+(v) the number
  of different words seen after v; a context never seen falls back to P(w).
- "books": the 242k most frequent English word pairs of Google Books with their counts, as the
  `symspellpy` package ships them (frequency_bigramdictionary_en_243_342.txt, MIT), kept where
  both words are in the vocabulary: P(w | v) = m P_list(w | v) + (1 - m) P(w), with P_list the
  count of (v, w) relative to the listed pairs after v and m = BOOKS_MASS. The list is cut at a
  count, so Witten-Bell's λ_v (which trusts large counts fully) would leave almost nothing for
  the pairs it lacks; a fixed share does not (m chosen on dev speakers, docs/benchmarks.md).
- "sphinx": the word pairs of CMU Sphinx's US English LM as pocketsphinx ships it (SPHINX_LM,
  read by asrkd.sphinx_lm: 2.05 M pairs, 1.94 M of them within train+wordfreq:50000), kept where
  both words are in the vocabulary: P(w | v) = P_sphinx(w | v) for a listed pair, plus
  (1 - S_v) P(w) for every word, S_v the listed pairs' mass (sphinx_bigram).
- Sources joined by "+" in that order ("train+books", "train+sphinx", "train+books+sphinx"): each
  interpolated over the next instead of over the unigram (WordLM.over): in-domain pairs first,
  then general English pairs, then P(w).
Trigram (`lm_order` 3): the word triples of CMU Sphinx's US English LM (1.67 M; 1.62 M within
train+wordfreq:50000) over the bigram above, which must include "sphinx": a listed triple keeps
its P(w | u, v), the rest of the context's mass goes to the bigram,
P(w | u, v) = P_sphinx(w | u, v) [listed] + (1 - S_uv) P(w | v) (sphinx_trigram; the triples are
numpy arrays, WordTriples). An ARPA file's 3-grams are read alike (arpa_lm).
The look-ahead inside a word stays the unigram's (the usual approximation).

Vocabulary (`eval.vocabulary`, `export`'s `vocabulary`): "train", the words of a transcript
manifest (usually the training data's) with their relative frequencies; "wordfreq:N", the N most
frequent English words of the `wordfreq` package (general text: subtitles, books, web, ...) with
its frequencies renormalised over the words kept; "train+wordfreq:N", both, by linear
interpolation P(w) = (1 - λ) P_train(w) + λ P_wordfreq(w), λ = `wordfreq_weight`: a word of either
list keeps a non-zero probability, and the in-domain counts still lift the corpus's own words.

An ARPA file (`arpa`: KenLM's lmplz, SRILM, the LibriSpeech LMs) replaces vocabulary and
bigrams: its 1-grams are the words and the unigram, its 2-grams the bigram in back-off form
(arpa_lm), for users who have an LM of their own domain.

Token prune (`token_prune`): at each frame only the tokens above this log-probability extend a
hypothesis (blank always counts); CTC's peaky outputs make -5 as accurate as -10 at half the
search's cost on real speech.

LM look-ahead (as in Kaldi's and flashlight's lexicon decoders): a hypothesis inside a word is
ranked with the best word score below its trie node (the best word it can still become), so a
half-spelt word competes with complete ones on the same footing instead of escaping the LM until
its last letter; once the word completes, the look-ahead is replaced by the word's own score.

Engines (`eval.lexicon_engine`): the search below is asrkd's reference; "flashlight" runs the same
search in C++ (asrkd.lexicon_flashlight: flashlight-text over a KenLM copy of the LM), for
character tokenizers.

End of the utterance: a hypothesis inside a word is not dropped. If the letters spelt so far form
a word, that word ends it; otherwise it is completed to its look-ahead word, the best word it can
still become, with that word's score: the letters still missing had no frames left to be heard
in, so the LM alone chooses them, and the score it was ranked with stays its final score.

Dimension legend: T' output frames, V vocabulary (tokens, blank included).
"""

from __future__ import annotations

import base64
import binascii
import functools
import gc
import gzip
import heapq
import io
import math
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from asrkd.config import (
    LEXICON_ENGINE,
    TOKEN_PRUNE,
    ConfigError,
    EvalConfig,
    ExportConfig,
    parse_bigrams,
    parse_vocabulary,
    transcript_order,
)
from asrkd.data.dataset import cut_text, load_cuts, split_by_speaker
from asrkd.data.text import WORD_START, BpeTokenizer, Tokenizer, normalize_text, word_counts
from asrkd.data.validate import DataError
from asrkd.sphinx_lm import is_sphinx_lm, read_sphinx_lm

NEG_INF = float("-inf")


SENTENCE_START = "<s>"  # the context of an utterance's first word (no transcript word has "<")
BOOKS_PAIRS = "symspellpy/frequency_bigramdictionary_en_243_342.txt"  # in symspellpy's wheel
BOOKS_MASS = 0.9  # m: the listed pairs' share of P(. | v) (dev: 0.9-0.97 > 0.7 > 0.5)


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


def clear_caches() -> None:
    """Forget the English books' pairs, the ARPA files and wordfreq's word lists read so far
    (each is read once per process, for the next decoder built; a decoder built keeps what it
    uses): ~45 MB after building the real-speech recipe's decoder."""
    _books_pairs.cache_clear()
    _sphinx_pairs.cache_clear()
    _sphinx_triples.cache_clear()
    _read_arpa.cache_clear()
    wordfreq = sys.modules.get("wordfreq")
    for name in ("get_frequency_dict", "get_frequency_list", "top_n_list"):
        cached = getattr(wordfreq, name, None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def _single_word(raw: str, chars: set[str]) -> str:
    """`raw` normalised like transcripts if that is one word spelt with `chars`, else ''."""
    word = normalize_text(raw)
    return word if word and " " not in word and set(word) <= chars else ""


def _letters(tokenizer: Tokenizer) -> set[str]:
    """The characters the tokenizer's symbols spell words with."""
    return {c for s in tokenizer.symbols[1:] for c in s} - {" ", WORD_START}


def wordfreq_lm(n_words: int, tokenizer: Tokenizer) -> WordLM:
    """The n_words most frequent English words of the `wordfreq` package, normalised like
    transcripts (normalize_text), kept when single words spelt with the tokenizer's characters;
    frequencies of words that normalise alike are summed, then renormalised."""
    try:
        import wordfreq
    except ImportError as err:
        raise ImportError(
            "a vocabulary with wordfreq needs the wordfreq package: pip install 'asrkd[lexicon]'"
        ) from err
    chars = _letters(tokenizer)
    freqs = wordfreq.get_frequency_dict("en")
    counts: dict[str, float] = {}
    for raw in wordfreq.top_n_list("en", n_words):
        if word := _single_word(raw, chars):
            counts[word] = counts.get(word, 0.0) + freqs[raw]
    if not counts:
        raise ValueError("no wordfreq word is spellable with this tokenizer")
    return WordLM.from_counts(counts)


def _shipped_file(package: str, relative: str, source: str, extra: str) -> Path:
    """The file at `relative` inside the installed `package` (a data file it ships, only read);
    ImportError naming the bigram `source` and asrkd's `extra` when the package or the file is
    not there."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(package)
    except PackageNotFoundError as err:
        raise ImportError(
            f"bigrams with {source} need the {package} package: pip install 'asrkd[{extra}]'"
        ) from err
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise ImportError(f"{package} {dist.version} does not ship {relative}")
    return path


@functools.cache
def _books_pairs() -> tuple[tuple[str, str, float], ...]:
    """(previous word, word, count) of the English books' word pairs symspellpy ships
    (BOOKS_PAIRS), normalised like transcripts; read once per process (every evaluated model
    and its timing build the same LM)."""
    path = _shipped_file("symspellpy", BOOKS_PAIRS, "books", "lexicon")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            *words, count = line.split()
            if len(words) == 2:
                pairs.append((normalize_text(words[0]), normalize_text(words[1]), float(count)))
    return tuple(pairs)


SPHINX_LM = "pocketsphinx/model/en-us/en-us.lm.bin"  # in pocketsphinx's wheel


@functools.cache
def _sphinx_pairs() -> tuple[tuple[str, str, float], ...]:
    """sphinx_pairs of CMU Sphinx's US English LM as pocketsphinx ships it (SPHINX_LM); read
    once per process."""
    return sphinx_pairs(_shipped_file("pocketsphinx", SPHINX_LM, "sphinx", "sphinx"))


@functools.cache
def _sphinx_triples() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """sphinx_triples of CMU Sphinx's US English LM as pocketsphinx ships it (SPHINX_LM); read
    once per process."""
    return sphinx_triples(_shipped_file("pocketsphinx", SPHINX_LM, "sphinx", "sphinx"))


def _sphinx_names(words: Iterable[str]) -> list[str]:
    """A Sphinx LM's words normalised like transcripts: <s> as SENTENCE_START, '' for other
    <...> tokens and for what normalises to more than one word."""
    names = []
    for raw in words:
        word = "" if raw.startswith("<") else normalize_text(raw)
        names.append(SENTENCE_START if raw == "<s>" else "" if " " in word else word)
    return names


def sphinx_triples(path: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(names, ids, P) of a Sphinx LM file's word triples: names, its words normalised
    (_sphinx_names); ids (R, 3) (u, v, w) into names, with u and v each the first id of its
    name (a context spelt two ways keeps its first spelling's triples); P (R,) P(w | u, v).
    A file of order 2 has none (R = 0)."""
    lm = read_sphinx_lm(path)
    names = _sphinx_names(lm.words)
    if lm.order < 3:
        return tuple(names), np.zeros((0, 3), dtype=np.int64), np.zeros(0)
    first = _first_ids(names)
    is_first = np.array([bool(n) and first[n] == i for i, n in enumerate(names)])
    grams = lm.higher[1]
    ids = grams.ids
    keep = is_first[ids[:, 0]] & is_first[ids[:, 1]] & np.array([bool(n) for n in names])[ids[:, 2]]
    return tuple(names), ids[keep].astype(np.int64), 10.0 ** grams.logprob[keep]


def sphinx_trigram(lm: WordLM) -> WordLM:
    """The bigram `lm` with the word triples of CMU Sphinx's US English LM (_sphinx_triples)
    whose three words are in lm's vocabulary (the first may be the sentence start): a listed
    triple keeps its P(w | u, v), the mass left in its context (1 - the listed triples' P in
    the vocabulary) goes to the bigram:
    P(w | u, v) = P_sphinx(w | u, v) [listed] + (1 - S_uv) P_lm(w | v)."""
    if lm.triples is not None:
        raise ValueError("this LM has its triples already")
    names, ids, probs = _sphinx_triples()
    words = tuple(lm.log_probs)
    index = _word_ids(words)
    to_vocabulary = np.array([index.get(n, -1) for n in names], dtype=np.int64)
    mapped = to_vocabulary[ids] if len(ids) else np.zeros((0, 3), dtype=np.int64)
    word_ids = mapped[:, 1:]
    keep = (mapped[:, 0] >= 0) & (word_ids >= 0).all(axis=1) & (word_ids < len(words)).all(axis=1)
    triples = WordTriples.from_arrays(words, mapped[keep], probs[keep])
    return WordLM(lm.log_probs, lm.contexts, triples)


def sphinx_pairs(path: Path) -> tuple[tuple[str, str, float], ...]:
    """(previous word, word, P(word | previous)) of a Sphinx LM file's word pairs, words
    normalised like transcripts, <s> as SENTENCE_START, other <...> tokens left out; a context
    spelt two ways keeps its first spelling's pairs."""
    lm = read_sphinx_lm(path)
    names = _sphinx_names(lm.words)
    first = _first_ids(names)
    return tuple(
        (names[v], names[w], 10.0**p)
        for (v, w), p in zip(lm.pairs.tolist(), lm.pair_logprob.tolist())
        if names[w] and names[v] and first[names[v]] == v
    )


def sphinx_bigram(unigram: WordLM) -> WordLM:
    """`unigram` with the bigram contexts of CMU Sphinx's US English LM (_sphinx_pairs),
    restricted to the unigram's vocabulary: a listed pair keeps its P(w | v), the mass left
    (1 - the listed pairs' P in the vocabulary) goes to the unigram:
    P(w | v) = P_sphinx(w | v) [listed] + (1 - S_v) P(w), S_v = sum of the listed P(. | v)."""
    after: dict[str, dict[str, float]] = {}
    for prev, word, p in _sphinx_pairs():
        if word in unigram.log_probs and (prev == SENTENCE_START or prev in unigram.log_probs):
            seen = after.setdefault(prev, {})
            seen[word] = seen.get(word, 0.0) + p
    contexts = {}
    for prev, seen in sorted(after.items()):
        rest = 1.0 - sum(seen.values())
        if rest <= 1e-9:  # every word it allows is listed: keep a sliver for the others
            seen = {w: p * (1 - 1e-6) / (1 - rest) for w, p in seen.items()}
            rest = 1e-6
        contexts[prev] = (math.log(rest), {w: float(f"{p:.6g}") for w, p in sorted(seen.items())})
    return WordLM(unigram.log_probs, contexts)


def books_bigram(unigram: WordLM) -> WordLM:
    """`unigram` with the bigram contexts of the English books' word pairs that symspellpy ships
    (BOOKS_PAIRS; module docstring), restricted to the unigram's vocabulary."""
    pairs: dict[str, dict[str, float]] = {}
    for prev, word, count in _books_pairs():
        if prev in unigram.log_probs and word in unigram.log_probs:
            after = pairs.setdefault(prev, {})
            after[word] = after.get(word, 0.0) + count
    contexts = {}
    for prev, after in sorted(pairs.items()):
        total = sum(after.values())
        # 6 significant digits: the pairs are most of an exported file's lexicon (JSON), and
        # their counts are not known better than that
        seen = {w: float(f"{BOOKS_MASS * c / total:.6g}") for w, c in sorted(after.items())}
        contexts[prev] = (math.log(1 - BOOKS_MASS), seen)
    return WordLM(unigram.log_probs, contexts)


def arpa_lm(path: str | Path, order: int, tokenizer: Tokenizer) -> WordLM:
    """The word LM of an ARPA file (.arpa, or gzipped .arpa.gz), up to `order` (1, 2 or 3).

    Words are normalised like transcripts (normalize_text); <s> is SENTENCE_START; </s>, <unk>
    and words that are not one word spelt with the tokenizer's characters are left out. Spellings
    that normalise alike ("The", "the") are one word: their 1-gram probabilities are summed, and
    as a context it keeps the back-off and the 2-grams of its first spelling in the file only
    (summing the contexts' pairs would give P(. | v) a mass above 1). The unigram is the 1-grams'
    probabilities; the bigram puts each context's listed 2-grams over its back-off weight b(v):
    P(w | v) is the listed P_arpa(w | v), else b(v) P(w); a listed pair below b(v) P(w) (rare in
    pruned models) is read as unlisted; 3-grams alike over the bigram (_with_arpa_triples).
    Higher-order sections are not read. A file that cannot be read, a malformed line, or an
    lm_order of n without n-grams is a DataError naming the file.
    Read once per process while the file stays the same (every evaluated model builds its LM)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such ARPA file (eval.arpa / arpa)")
    stat = path.stat()
    return _read_arpa(path, stat.st_mtime_ns, stat.st_size, order, frozenset(_letters(tokenizer)))


@functools.lru_cache(maxsize=4)
def _read_arpa(
    path: Path, mtime_ns: int, size: int, order: int, chars: frozenset[str]
) -> WordLM:  # mtime and size: a file changed behind the same path is read again
    return _parse_arpa(path, order, chars)


def _parse_arpa(path: Path, order: int, chars: frozenset[str]) -> WordLM:
    """arpa_lm's reading, uncached: an ARPA text file, or a Sphinx binary one (asrkd.sphinx_lm)."""
    if is_sphinx_lm(path):
        entries = read_sphinx_lm(path).entries(order)
    else:
        entries = _arpa_entries(path, order)
    return _lm_of_entries(path, entries, order, chars)


def _arpa_entries(path: Path, order: int) -> Iterator[tuple[int, tuple[str, ...], float, float]]:
    """(n, words, log10 P, log10 back-off) of an ARPA text file's n-grams up to `order`; a
    malformed line or an unreadable file is a DataError naming it."""
    section = 0
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line or line == "\\data\\" or line.startswith("ngram "):
                    continue
                if line == "\\end\\":
                    break
                if line.startswith("\\") and line.endswith("-grams:"):
                    n = line[1:].split("-")[0]
                    if not n.isdigit() or int(n) == 0:
                        raise DataError(f"{path}:{number}: unreadable ARPA section {line!r}")
                    section = int(n)
                    if section > order:  # sections come in increasing order
                        break
                    continue
                if section == 0:
                    continue
                fields = line.split()
                try:
                    if len(fields) not in (section + 1, section + 2):
                        raise ValueError(f"{section}-gram line with {len(fields)} fields")
                    log10_p = float(fields[0])
                    bow = float(fields[section + 1]) if len(fields) == section + 2 else 0.0
                except ValueError as err:
                    raise DataError(f"{path}:{number}: malformed ARPA line ({err})") from err
                yield section, tuple(fields[1 : section + 1]), log10_p, bow
    except (UnicodeDecodeError, OSError, EOFError) as err:  # binary, not gzip, truncated gzip
        raise DataError(f"{path}: not a readable ARPA text file ({err})") from err


def _lm_of_entries(
    path: Path,
    entries: Iterable[tuple[int, tuple[str, ...], float, float]],
    order: int,
    chars: frozenset[str],
) -> WordLM:
    """arpa_lm's WordLM of an LM file's (n, words, log10 P, log10 back-off) entries."""
    ln10 = math.log(10.0)
    unigram: dict[str, float] = {}  # word -> P(word), summed over spellings
    backoff: dict[str, tuple[float, str]] = {}  # context -> (ln b(v), the spelling it came from)
    pairs: dict[tuple[str, str], float] = {}  # (v, w) -> P(w | v)
    names: dict[str, str] = {}  # the file's spelling -> normalised word (or "" when left out)

    def word(raw: str) -> str:
        if raw not in names:
            left_out = raw in ("</s>", "<unk>", "<UNK>")
            names[raw] = (
                raw if raw == SENTENCE_START else "" if left_out else _single_word(raw, chars)
            )
        return names[raw]

    pair_backoff: dict[tuple[str, str], float] = {}  # (u, v) -> ln b(u v)
    triples: dict[tuple[str, str, str], float] = {}  # (u, v, w) -> P(w | u, v)

    def first(words: list[str], raws: tuple[str, ...]) -> bool:  # contexts: first spellings
        return all(backoff.get(w, (0, ""))[1] == r for w, r in zip(words, raws))

    found = set()
    for section, raws, log10_p, bow in entries:
        words = [word(w) for w in raws]
        found.add(section)
        if section == 1 and words[0]:
            backoff.setdefault(words[0], (bow * ln10, raws[0]))
            if words[0] != SENTENCE_START:
                unigram[words[0]] = unigram.get(words[0], 0.0) + 10.0**log10_p
        elif section == 2 and all(words) and first(words[:1], raws[:1]):
            key = (words[0], words[1])  # target spellings that merge: probabilities add
            pairs[key] = pairs.get(key, 0.0) + 10.0**log10_p
            if bow and first(words, raws):
                pair_backoff.setdefault(key, bow * ln10)
        elif section == 3 and all(words) and first(words[:2], raws[:2]):
            key = (words[0], words[1], words[2])
            triples[key] = triples.get(key, 0.0) + 10.0**log10_p
    if not unigram:
        raise DataError(f"{path}: no 1-gram spellable with the tokenizer's characters")
    for n in range(2, order + 1):
        if n not in found:
            raise DataError(f"{path}: lm_order={order} but the file has no {n}-grams")
    log_probs = {w: math.log(p) for w, p in sorted(unigram.items()) if p > 0}
    contexts: dict[str, tuple[float, dict[str, float]]] = {}
    if order >= 2:  # every context the file weighs, listed pairs or not
        contexts = {v: (b, {}) for v, (b, _) in sorted(backoff.items()) if b != 0.0}
        for (prev, w), p in sorted(pairs.items()):
            if w not in log_probs:
                continue
            b = backoff[prev][0]
            rest = p - math.exp(b + log_probs[w])
            if rest > 0:
                contexts.setdefault(prev, (b, {}))[1][w] = float(f"{rest:.6g}")
    lm = WordLM(log_probs, contexts)
    return _with_arpa_triples(lm, pair_backoff, triples) if order == 3 else lm


def _with_arpa_triples(
    lm: WordLM,
    pair_backoff: Mapping[tuple[str, str], float],
    triples: Mapping[tuple[str, str, str], float],
) -> WordLM:
    """The bigram `lm` with an ARPA file's 3-grams in back-off form: P(w | u, v) is the listed
    P_arpa(w | u, v), else b(u v) P(w | v); a listed triple below b(u v) P(w | v) is read as
    unlisted (as _lm_of_entries reads pairs)."""
    words = tuple(lm.log_probs)
    index = _word_ids(words)

    def known(u: str, v: str) -> bool:
        return u in index and v in lm.log_probs

    rows, shares = [], []
    for (u, v, w), p in sorted(triples.items()):
        if known(u, v) and w in lm.log_probs:
            rest = p - math.exp(pair_backoff.get((u, v), 0.0) + lm.score(v, w))
            if rest > 0:
                rows.append((index[u], index[v], index[w]))
                shares.append(float(f"{rest:.6g}"))
    contexts = {(index[u], index[v]): b for (u, v), b in pair_backoff.items() if known(u, v)}
    ids = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return WordLM(
        lm.log_probs, lm.contexts, WordTriples.from_arrays(words, ids, np.array(shares), contexts)
    )


def vocabulary_lm(
    vocabulary: str,
    wordfreq_weight: float,
    tokenizer: Tokenizer,
    train_lm: Callable[[], WordLM],
    general: tuple[str, ...] = (),
) -> WordLM:
    """The LM a vocabulary spec names ("train", "wordfreq:N", "train+wordfreq:N"): its unigram,
    and the transcripts' bigram where train_lm() has one (train_lm() gives the transcripts' LM
    and is only called when the spec uses it); under it the general bigrams `general` names
    ("books", "sphinx"), the books' over Sphinx's where both."""
    use_train, n_wordfreq = parse_vocabulary(vocabulary)
    if not n_wordfreq:
        lm = train_lm()
    else:
        words = wordfreq_lm(n_wordfreq, tokenizer)
        lm = train_lm().mix(words, wordfreq_weight) if use_train else words
    lower = sphinx_bigram(lm) if "sphinx" in general else None
    if "books" in general:
        books = books_bigram(lm)
        lower = books if lower is None else books.over(lower)
    return lm if lower is None else lm.over(lower)


def vocabulary_label(cfg: EvalConfig | ExportConfig) -> str:
    """Where cfg's lexicon words come from, as a decoder and an exported file record it: the
    vocabulary spec, or "arpa:NAME" for an ARPA file."""
    return f"arpa:{Path(cfg.arpa).name}" if cfg.arpa else cfg.vocabulary


def config_lm(cfg: EvalConfig | ExportConfig, tokenizer: Tokenizer, train_lm) -> WordLM:
    """The word LM cfg's lexicon fields name; train_lm(order) gives the transcripts' LM of
    that order (2 where the bigram counts their pairs)."""
    if cfg.arpa:
        return arpa_lm(cfg.arpa, cfg.lm_order, tokenizer)
    order = transcript_order(cfg.lm_order, cfg.bigrams)
    general = tuple(s for s in parse_bigrams(cfg.bigrams) if s != "train")
    lm = vocabulary_lm(
        cfg.vocabulary,
        cfg.wordfreq_weight,
        tokenizer,
        lambda: train_lm(order),
        general if cfg.lm_order >= 2 else (),
    )
    return sphinx_trigram(lm) if cfg.lm_order == 3 else lm


def training_manifest(run_config: dict, model_path: str | Path) -> str:
    """The training cut manifest a checkpoint's run config names (ConfigError if none)."""
    source = run_config.get("data", {}).get("train_cuts", "")
    if not source:
        raise ConfigError(
            f"{model_path} names no training manifest: give the cut manifest whose transcripts "
            "are the lexicon's words (eval.lexicon_cuts, or lexicon_cuts for export)"
        )
    return source


def lm_from_manifest(path: str | Path, order: int = 1) -> WordLM:
    """The unigram (order 1) or bigram (2) LM of a cut manifest's transcripts."""
    return WordLM.from_texts((cut_text(c) for c in load_cuts(path)), order)


def training_lm(run_config: dict, model_path: str | Path, order: int = 1) -> WordLM:
    """The LM of the transcripts a checkpoint was trained on: its training manifest's, and where
    the run kept transcripts for only some speakers (data.labelled_fraction < 1) those speakers'
    alone, so that a student of situation (b) never decodes with the text it was denied."""
    cuts = load_cuts(training_manifest(run_config, model_path))
    fraction = float(run_config.get("data", {}).get("labelled_fraction", 1.0))
    if fraction < 1.0:
        seed = int(run_config.get("train", {}).get("seed", 0))
        cuts = split_by_speaker(cuts, fraction, seed)[0]
    return WordLM.from_texts((cut_text(c) for c in cuts), order)


def stored_lm(cfg: EvalConfig, lexicon: LexiconDecoder, model_path: str | Path) -> WordLM:
    """The word LM for cfg from the lexicon an exported file carries: as stored where the file
    was exported with cfg's vocabulary and LM order; a stored "train" unigram is mixed with
    cfg's wordfreq words (files exported before the export stored its vocabulary whole);
    anything else is a ConfigError rather than a silently different LM."""
    lm = lexicon.lm
    same_bigram = lm.order == cfg.lm_order and lexicon.bigrams == cfg.bigrams
    if lexicon.vocabulary == vocabulary_label(cfg) and same_bigram:
        return lm
    if lexicon.vocabulary == "train" and same_bigram and cfg.bigrams == "train":
        return vocabulary_lm(cfg.vocabulary, cfg.wordfreq_weight, lexicon.tokenizer, lambda: lm)
    raise ConfigError(
        f"{model_path} carries a lexicon of vocabulary {lexicon.vocabulary!r}, LM order "
        f"{lm.order}, bigrams {lexicon.bigrams!r}; eval.vocabulary={cfg.vocabulary!r}, "
        f"eval.lm_order={cfg.lm_order}, eval.bigrams={cfg.bigrams!r} asks for another: set "
        "them to the file's (eval.arpa=PATH for a vocabulary 'arpa:NAME'), or give "
        "eval.lexicon_cuts"
    )


def eval_decoder(
    cfg: EvalConfig,
    tokenizer: Tokenizer,
    stored: LexiconDecoder | None,
    model_path: str | Path,
    train_lm: Callable[[int], WordLM],
) -> LexiconDecoder | None:
    """The decoder cfg asks for (None for greedy), for `asrkd evaluate` on any model file: the
    lexicon the file carries (`stored`, through stored_lm) unless cfg.lexicon_cuts names other
    transcripts or cfg.arpa another ARPA file than the stored one's, else cfg's LM (config_lm)
    whose transcripts' part is train_lm(order), through cfg.lm_cache where it names a folder
    and the C++ search decodes (asrkd.lexicon_cache). Beam and weights always come from cfg."""
    if cfg.decoder == "greedy":
        return None
    other_arpa = cfg.arpa and stored is not None and stored.vocabulary != vocabulary_label(cfg)
    if stored is not None and not cfg.lexicon_cuts and not other_arpa:
        settings = (cfg.beam, cfg.lm_weight, cfg.word_bonus, cfg.token_prune,
                    cfg.blank_penalty, cfg.blank_skip, cfg.lexicon_engine)  # fmt: skip
        same_lm = (stored.vocabulary, stored.lm_order, stored.bigrams) == (
            vocabulary_label(cfg),
            cfg.lm_order,
            cfg.bigrams,
        )  # stored_lm would return the stored LM
        if same_lm and settings == stored.settings:
            return stored  # the file's own decoder: not a second trie of the same words
        if stored.lm is None:
            raise ValueError(f"{model_path}: the file's decoder released its LM (release_lm)")
        lm, arpa = stored_lm(cfg, stored, model_path), None
    else:
        from asrkd.lexicon_cache import cached_arpa, reads_cache

        if reads_cache(cfg, tokenizer):
            lm, arpa = None, cached_arpa(cfg.lm_cache, cfg, tokenizer, train_lm)
        else:
            lm, arpa = config_lm(cfg, tokenizer, train_lm), None
    return LexiconDecoder(
        tokenizer,
        lm,
        cfg.beam,
        cfg.lm_weight,
        cfg.word_bonus,
        prune=cfg.token_prune,
        vocabulary=vocabulary_label(cfg),
        bigrams=cfg.bigrams,
        engine=cfg.lexicon_engine,
        arpa=arpa,
        blank_penalty=cfg.blank_penalty,
        blank_skip=cfg.blank_skip,
    )


@dataclass
class _Trie:
    """Token-id paths of the vocabulary's words; node 0 is the root."""

    children: list[dict[int, int]] = field(default_factory=lambda: [{}])
    word: list[str | None] = field(default_factory=lambda: [None])

    def add(self, ids: list[int], word: str) -> None:
        node = 0
        for i in ids:
            nxt = self.children[node].get(i)
            if nxt is None:
                nxt = len(self.children)
                self.children[node][i] = nxt
                self.children.append({})
                self.word.append(None)
            node = nxt
        self.word[node] = word

    def look_ahead(self, score: Callable[[str], float]) -> tuple[list[float], list[str | None]]:
        """Per node, the best score of the words at or below it and that word (the first in
        insertion order among equals); the root's entries are 0 and None."""
        best: list[float] = [NEG_INF] * len(self.word)
        best_word: list[str | None] = [None] * len(self.word)
        for node in range(len(self.word) - 1, 0, -1):  # children are numbered after parents
            if self.word[node] is not None:
                best[node], best_word[node] = score(self.word[node]), self.word[node]
            for nxt in self.children[node].values():
                if best[nxt] > best[node]:
                    best[node], best_word[node] = best[nxt], best_word[nxt]
        best[0] = 0.0
        return best, best_word


@dataclass(frozen=True)
class _Hyp:
    node: int  # trie node of the word being spelled (0: between words)
    words: tuple[str, ...]
    lm: float  # LM score and word bonuses of the completed words
    last: int  # last emitted token (-1: none), for CTC's repeat rule
    score: float  # lm + the look-ahead of node: what the beam is ranked by


@dataclass(frozen=True)
class ArpaSource:
    """A word LM as the ARPA text write_arpa writes, gzipped and base64-encoded: how an exported
    file carries its decoder's LM (the format KenLM, flashlight and sherpa-onnx read): 6.9 MB
    of text, 3.1 MB packed, for the real-speech recipe's 50k words and their word pairs, whose
    Python tables take ~100 MB. `order`: the LM's (1, 2 or 3)."""

    packed: str
    order: int

    @classmethod
    def from_lm(cls, lm: WordLM) -> ArpaSource:
        from asrkd.lexicon_flashlight import lm_arpa_file

        with lm_arpa_file(lm) as path:
            return cls.from_file(ArpaFile(path, lm.order))

    @classmethod
    def from_file(cls, arpa: ArpaFile) -> ArpaSource:
        packed = base64.b64encode(gzip.compress(arpa.path.read_bytes(), 6)).decode("ascii")
        return cls(packed, arpa.order)

    @contextmanager
    def file(self):
        """The ARPA text in a temporary file, removed on exit (unzipped a block at a time)."""
        with tempfile.TemporaryDirectory(prefix="asrkd-arpa-") as folder:
            path = Path(folder) / "lm.arpa"
            # in a function of its own: the unpacked gzip bytes (34 MB for the real-speech
            # recipe's trigram) are freed before the caller's KenLM reads the file
            self._unpack(path)
            yield path

    def _unpack(self, path: Path) -> None:
        try:
            raw = io.BytesIO(base64.b64decode(self.packed, validate=True))
            with gzip.GzipFile(fileobj=raw) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (binascii.Error, gzip.BadGzipFile, zlib.error, EOFError) as err:
            raise DataError(f"the packed ARPA text does not unpack ({err})") from err

    def read_lm(self, tokenizer: Tokenizer) -> WordLM:
        """The LM's Python tables (ArpaFile.read_lm of the unpacked text), not cached."""
        with self.file() as path:
            return ArpaFile(path, self.order).read_lm(tokenizer)


@dataclass(frozen=True)
class ArpaFile:
    """A word LM as an ARPA text file on disk that write_arpa wrote (asrkd.lexicon_cache's
    entries): read in place, like ArpaSource's unpacked copy. `order`: the LM's (1, 2 or 3)."""

    path: Path
    order: int

    @contextmanager
    def file(self):
        yield self.path

    def read_lm(self, tokenizer: Tokenizer) -> WordLM:
        """The LM's Python tables (arpa_lm: P to the file's 7 significant digits), not cached."""
        return _parse_arpa(self.path, self.order, frozenset(_letters(tokenizer)))


class LexiconDecoder:
    """CTC prefix beam search restricted to the words of `lm`, for char or BPE tokenizers."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        lm: WordLM | None,
        beam: int = 8,
        lm_weight: float = 0.5,
        word_bonus: float = 1.0,
        prune: float = TOKEN_PRUNE,
        vocabulary: str = "train",
        bigrams: str = "train",
        engine: str = LEXICON_ENGINE,
        arpa: ArpaSource | ArpaFile | None = None,
        blank_penalty: float = 0.0,
        blank_skip: float = 0.0,
    ) -> None:
        """lm: the word LM; or None and `arpa`, the LM as an ARPA file that write_arpa wrote
        (an exported file's): the C++ search reads it straight, without the LM's Python tables,
        which are read from it only when asked for (`lm`); the Python search reads them now.
        blank_penalty: subtracted from blank's log-probability at every frame; blank_skip: a
        run of frames where blank's probability is at least this is searched as one frame
        (EvalConfig)."""
        self.blank, self.blank_penalty = tokenizer.blank_id, blank_penalty
        self.blank_skip = blank_skip
        self.tokenizer, self.vocabulary = tokenizer, vocabulary  # where lm's words came from
        self.bigrams = bigrams  # where its word pairs came from (lm_order 2 or 3)
        self.beam, self.lm_weight, self.word_bonus, self.prune = beam, lm_weight, word_bonus, prune
        self.bpe = isinstance(tokenizer, BpeTokenizer)
        # flashlight searches character tokenizers; BPE pieces always the Python search
        self.engine_asked = engine
        self.engine = "python" if self.bpe else engine
        if lm is None and arpa is None:
            raise ValueError("a lexicon decoder needs a word LM or an ARPA file")
        self._lm, self._arpa = lm, arpa
        if lm is None and self.engine != "flashlight":
            self._lm = arpa.read_lm(tokenizer)
        self.lm_order = self._lm.order if self._lm is not None else arpa.order
        index = {s: i for i, s in enumerate(tokenizer.symbols)}
        self.space = None if self.bpe else index.get(" ")
        if not self.bpe and self.space is None:
            raise ValueError("lexicon decoding needs a word separator (' ') or BPE pieces")
        self._fast = None
        if self.engine == "flashlight":
            self._fast = self._flashlight_search()
            return
        spellings = self._spellings(self._lm.log_probs)
        self.trie = _Trie()
        for word, ids in spellings.items():
            self.trie.add(ids, word)
        self.starts_word = {i for s, i in index.items() if s.startswith(WORD_START)}
        self.look, self.best_word = self.trie.look_ahead(self._word_score)

    def _spellings(self, words: Iterable[str]) -> dict[str, list[int]]:
        """Token ids of the words spellable with the tokenizer's symbols."""
        spellings = {}
        for word in words:
            ids = self.tokenizer.encode(word)
            if ids and self.tokenizer.decode(ids) == word:
                spellings[word] = ids
        return spellings

    def _flashlight_search(self):
        from asrkd.lexicon_flashlight import FlashlightSearch, arpa_words, lm_arpa_file

        from_file = self._lm is None  # an exported file's ARPA text, else one written from lm
        with self._arpa.file() if from_file else lm_arpa_file(self._lm) as path:
            words = arpa_words(path) if from_file else list(self._lm.log_probs)
            return FlashlightSearch(
                self.tokenizer.symbols, self.blank, self._spellings(words), words, path,
                self.beam, self.lm_weight, self.word_bonus, self.prune,
            )  # fmt: skip

    @property
    def lm(self) -> WordLM | None:
        """The word LM's Python tables (read from the ARPA file on first use where the decoder
        was built from one); None once released."""
        if self._lm is None and self._arpa is not None:
            self._lm = self._arpa.read_lm(self.tokenizer)
        return self._lm

    def release_lm(self) -> LexiconDecoder:
        """Drop the word LM's Python tables once this decoder is the one that decodes (the
        flashlight engine searches its own KenLM copy; ~45-100 MB for the real-speech
        recipe's LM): `lm` is None afterwards, so eval_decoder can no longer derive another
        LM from it. The Python engine searches with them: kept there."""
        if self._fast is not None:
            self._lm, self._arpa = None, None
        return self

    def knows(self, word: str) -> bool:
        """Whether `word` is in the vocabulary (OOV rates)."""
        if self._fast is not None:
            return word in self._fast
        return word in self.lm.log_probs

    @property
    def settings(self) -> tuple[int, float, float, float, float, float, str]:
        """(beam, lm_weight, word_bonus, prune, blank_penalty, blank_skip, engine asked for):
        with the LM, what the search depends on."""
        return (
            self.beam,
            self.lm_weight,
            self.word_bonus,
            self.prune,
            self.blank_penalty,
            self.blank_skip,
            self.engine_asked,
        )

    def _word_score(self, word: str) -> float:
        """A word's unigram score: the look-ahead of the words still being spelt."""
        return self.lm_weight * self._lm.log_probs[word] + self.word_bonus

    def _next_score(self, words: tuple[str, ...], word: str) -> float:
        """The score of `word` completed after `words` (the bigram's or trigram's, with
        contexts)."""
        return self.lm_weight * self._lm.next_score(words, word) + self.word_bonus

    def _extend(self, hyp: _Hyp, token: int) -> _Hyp | None:
        """The hypothesis after emitting `token`, or None where the lexicon forbids it."""
        children, word = self.trie.children, self.trie.word[hyp.node]
        if token == self.space:  # char tokenizer: a space ends a complete word
            if hyp.node == 0 or word is None:
                return None
            lm = hyp.lm + self._next_score(hyp.words, word)
            return _Hyp(0, (*hyp.words, word), lm, token, lm)
        if self.bpe and token in self.starts_word and hyp.node != 0:
            if word is None or token not in children[0]:  # a new word begins: close this one
                return None
            words, lm = (*hyp.words, word), hyp.lm + self._next_score(hyp.words, word)
            nxt = children[0][token]
            return _Hyp(nxt, words, lm, token, lm + self.look[nxt])
        nxt = children[hyp.node].get(token)
        if nxt is None:
            return None
        return _Hyp(nxt, hyp.words, hyp.lm, token, hyp.lm + self.look[nxt])

    def _final(self, hyp: _Hyp) -> tuple[float, tuple[str, ...]]:
        """LM score and words once the utterance ends. Inside a word: the word spelt so far if
        it is one, else the best word it can still become (its look-ahead word)."""
        if hyp.node == 0:
            return hyp.lm, hyp.words
        word = self.trie.word[hyp.node] or self.best_word[hyp.node]
        return hyp.lm + self._next_score(hyp.words, word), (*hyp.words, word)

    def decode(self, log_probs: np.ndarray) -> str:
        """log_probs (T', V): log-softmax outputs of one utterance's valid frames -> text.

        Python's cyclic garbage collector is paused meanwhile: the search allocates hundreds of
        thousands of small objects, none in a cycle (reference counting frees them all), and
        each collection they trigger walked the whole heap, the word LM's entries included
        (30 % of the decoder's time alone, twice that in a process holding more)."""
        if self.blank_skip:
            log_probs = blank_runs_merged(log_probs, self.blank, self.blank_skip)
        if self.blank_penalty:
            log_probs = np.array(log_probs)  # a copy: the caller's stays as it was
            log_probs[:, self.blank] -= self.blank_penalty
        if self._fast is not None:
            return self._fast.decode(log_probs)
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._search(log_probs)
        finally:
            if enabled:
                gc.enable()

    def _search(self, log_probs: np.ndarray) -> str:
        # A prefix (the tokens emitted so far: CTC collapses paths onto it) is a number:
        # `kids[prefix][token]` numbers its extensions, `hyps[prefix]` is its hypothesis, None
        # where the lexicon forbids it. Numbers rather than token tuples: hashing ever longer
        # tuples dominated decoding. `beams`: prefix -> (log P(ends in blank), log P(ends in a
        # token)); per frame `blk` and `tok` collect the two for the next frame's prefixes.
        beams: dict[int, tuple[float, float]] = {0: (0.0, NEG_INF)}
        hyps: list[_Hyp | None] = [_Hyp(0, (), 0.0, -1, 0.0)]
        kids: list[dict[int, int]] = [{}]
        blank, extend, lae = self.blank, self._extend, _lae
        keep = log_probs > self.prune
        keep[:, blank] = False
        for row, cand in zip(log_probs.tolist(), (np.flatnonzero(k).tolist() for k in keep)):
            blk: dict[int, float] = {}
            tok: dict[int, float] = {}
            for prefix, (pb, pnb) in beams.items():
                hyp, total = hyps[prefix], lae(pb, pnb)
                x, val = blk.get(prefix), total + row[blank]
                blk[prefix] = val if x is None else lae(x, val)
                children, last = kids[prefix], hyp.last
                for v in cand:
                    if v == last:  # a repeat collapses onto the prefix
                        x, val = tok.get(prefix), pnb + row[v]
                        tok[prefix] = val if x is None else lae(x, val)
                        source = pb  # a new token only after a blank
                    else:
                        source = total
                    new = children.get(v)
                    if new is None:
                        new = children[v] = len(hyps)
                        hyps.append(extend(hyp, v))
                        kids.append({})
                    if hyps[new] is not None:
                        x, val = tok.get(new), source + row[v]
                        tok[new] = val if x is None else lae(x, val)
            # Ranked by acoustic + LM (look-ahead included) score; only the current beams' own
            # prefixes can end in a blank, so only they need the log-add.
            ranked = {p: v + hyps[p].score for p, v in tok.items()}
            for p, v in blk.items():
                ranked[p] = lae(v, tok.get(p, NEG_INF)) + hyps[p].score
            best = heapq.nlargest(self.beam, ranked, key=ranked.__getitem__)
            beams = {p: (blk.get(p, NEG_INF), tok.get(p, NEG_INF)) for p in best}
        return self._best(beams, hyps)

    def _best(self, beams, hyps) -> str:
        finished = []
        for prefix, (pb, pnb) in beams.items():
            lm, words = self._final(hyps[prefix])
            finished.append((_lae(pb, pnb) + lm, words))
        return " ".join(max(finished, key=lambda f: f[0])[1])


def blank_runs_merged(log_probs: np.ndarray, blank: int, skip: float) -> np.ndarray:
    """log_probs (T', V) -> (T'', V), T'' <= T': every run of consecutive frames where blank's
    probability is at least `skip` (0 < skip < 1) kept as its first frame alone, the other
    frames as they are. A run's one frame still parts a token from its repeat."""
    sure = log_probs[:, blank] >= math.log(skip)
    keep = ~sure
    keep[0] = True
    keep[1:] |= sure[1:] & ~sure[:-1]  # a run's first frame
    return log_probs[keep]


def _lae(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) on Python floats (numpy's is slow on scalars)."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))
