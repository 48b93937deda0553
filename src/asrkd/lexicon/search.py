"""The lexicon-constrained CTC prefix beam search (LexiconDecoder; asrkd.lexicon's docstring)
and the decoder a config asks for (eval_decoder).

Dimension legend: T' output frames, V vocabulary (tokens, blank included)."""

from __future__ import annotations

import gc
import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asrkd.config import (
    LEXICON_ENGINE,
    TOKEN_PRUNE,
    EvalConfig,
)
from asrkd.data.text import WORD_START, BpeTokenizer, Tokenizer
from asrkd.lexicon.lm import WordLM
from asrkd.lexicon.sources import (
    ArpaFile,
    ArpaSource,
    config_lm,
    stored_lm,
    vocabulary_label,
)

NEG_INF = float("-inf")


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
                    cfg.blank_penalty, cfg.lexicon_engine)  # fmt: skip
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
    ) -> None:
        """lm: the word LM; or None and `arpa`, the LM as an ARPA file that write_arpa wrote
        (an exported file's): the C++ search reads it straight, without the LM's Python tables,
        which are read from it only when asked for (`lm`); the Python search reads them now.
        blank_penalty: subtracted from blank's log-probability at every frame (EvalConfig)."""
        self.blank, self.blank_penalty = tokenizer.blank_id, blank_penalty
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
    def settings(self) -> tuple[int, float, float, float, float, str]:
        """(beam, lm_weight, word_bonus, prune, blank_penalty, engine asked for): with the LM,
        what the search depends on."""
        return (
            self.beam,
            self.lm_weight,
            self.word_bonus,
            self.prune,
            self.blank_penalty,
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


def _lae(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) on Python floats (numpy's is slow on scalars)."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))
