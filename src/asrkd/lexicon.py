"""Lexicon-constrained CTC prefix beam search with a unigram word language model.

Greedy CTC decoding spells freely, so a model that gets most letters right still misspells most
words. This decoder only lets hypotheses spell words of a closed vocabulary (the words of a
transcript manifest, usually the training data's) and scores each completed word with
`lm_weight * log P(word) + word_bonus`, P estimated from the same transcripts. A unigram model
is exact for the embedded corpus, whose words are drawn independently; on real text it is the
weakest useful LM. Words outside the vocabulary cannot be recognised (their share is the OOV
rate, which `evaluate` reports).

Dimension legend: T' output frames, V vocabulary (tokens, blank included).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asrkd.config import ConfigError
from asrkd.data.dataset import cut_text, load_cuts
from asrkd.data.text import WORD_START, BpeTokenizer, Tokenizer, word_counts

NEG_INF = float("-inf")


@dataclass(frozen=True)
class WordLM:
    """Unigram log probabilities of a closed vocabulary (relative frequencies)."""

    log_probs: dict[str, float]

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> WordLM:
        counts = word_counts(texts)
        if not counts:
            raise ValueError("no words to build a lexicon from")
        total = sum(counts.values())
        return cls({w: math.log(c / total) for w, c in sorted(counts.items())})


def training_manifest(run_config: dict, model_path: str | Path) -> str:
    """The training cut manifest a checkpoint's run config names (ConfigError if none)."""
    source = run_config.get("data", {}).get("train_cuts", "")
    if not source:
        raise ConfigError(
            f"{model_path} names no training manifest: give the cut manifest whose transcripts "
            "are the lexicon's words (eval.lexicon_cuts, or lexicon_cuts for export)"
        )
    return source


def lm_from_manifest(path: str | Path) -> WordLM:
    """The unigram LM of a cut manifest's transcripts."""
    return WordLM.from_texts(cut_text(c) for c in load_cuts(path))


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


@dataclass(frozen=True)
class _Hyp:
    node: int  # trie node of the word being spelled (0: between words)
    words: tuple[str, ...]
    lm: float  # LM score and word bonuses of the completed words
    last: int  # last emitted token (-1: none), for CTC's repeat rule


class LexiconDecoder:
    """CTC prefix beam search restricted to the words of `lm`, for char or BPE tokenizers."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        lm: WordLM,
        beam: int = 8,
        lm_weight: float = 0.5,
        word_bonus: float = 1.0,
        prune: float = -10.0,
    ) -> None:
        self.blank = tokenizer.blank_id
        self.beam, self.lm_weight, self.word_bonus, self.prune = beam, lm_weight, word_bonus, prune
        self.lm = lm
        self.bpe = isinstance(tokenizer, BpeTokenizer)
        index = {s: i for i, s in enumerate(tokenizer.symbols)}
        self.space = None if self.bpe else index.get(" ")
        if not self.bpe and self.space is None:
            raise ValueError("lexicon decoding needs a word separator (' ') or BPE pieces")
        self.trie = _Trie()
        for word in lm.log_probs:
            ids = tokenizer.encode(word)
            if ids and tokenizer.decode(ids) == word:  # spellable with these symbols
                self.trie.add(ids, word)
        self.starts_word = {i for s, i in index.items() if s.startswith(WORD_START)}

    def _word_score(self, word: str) -> float:
        return self.lm_weight * self.lm.log_probs[word] + self.word_bonus

    def _extend(self, hyp: _Hyp, token: int) -> _Hyp | None:
        """The hypothesis after emitting `token`, or None where the lexicon forbids it."""
        children, word = self.trie.children, self.trie.word[hyp.node]
        if token == self.space:  # char tokenizer: a space ends a complete word
            if hyp.node == 0 or word is None:
                return None
            return _Hyp(0, (*hyp.words, word), hyp.lm + self._word_score(word), token)
        if self.bpe and token in self.starts_word and hyp.node != 0:
            if word is None or token not in children[0]:  # a new word begins: close this one
                return None
            words, lm = (*hyp.words, word), hyp.lm + self._word_score(word)
            return _Hyp(children[0][token], words, lm, token)
        nxt = children[hyp.node].get(token)
        return None if nxt is None else _Hyp(nxt, hyp.words, hyp.lm, token)

    def _final(self, hyp: _Hyp) -> tuple[float, tuple[str, ...]] | None:
        """LM score and words once the utterance ends, None when it ends inside a word."""
        if hyp.node == 0:
            return hyp.lm, hyp.words
        word = self.trie.word[hyp.node]
        if word is None:
            return None
        return hyp.lm + self._word_score(word), (*hyp.words, word)

    def decode(self, log_probs: np.ndarray) -> str:
        """log_probs (T', V): log-softmax outputs of one utterance's valid frames -> text."""
        # prefix -> [log P(ends in blank), log P(ends in a token)]. A prefix (the tokens emitted
        # so far: CTC collapses paths onto it) is a number: `child[(prefix, token)]` numbers its
        # extensions, `hyps[prefix]` is its hypothesis, None where the lexicon forbids it.
        # Numbers rather than token tuples: hashing ever longer tuples dominated decoding.
        beams: dict[int, list[float]] = {0: [0.0, NEG_INF]}
        hyps: list[_Hyp | None] = [_Hyp(0, (), 0.0, -1)]
        child: dict[tuple[int, int], int] = {}
        blank = self.blank
        keep = log_probs > self.prune
        keep[:, blank] = False
        for row, cand in zip(log_probs.tolist(), (np.flatnonzero(k).tolist() for k in keep)):
            nxt: dict[int, list[float]] = {}
            for prefix, (pb, pnb) in beams.items():
                hyp, total = hyps[prefix], _lae(pb, pnb)
                _add(nxt, prefix, 0, total + row[blank])
                for v in cand:
                    if v == hyp.last:
                        _add(nxt, prefix, 1, pnb + row[v])  # repeat collapses onto the prefix
                        source = pb  # a new token only after a blank
                    else:
                        source = total
                    new = child.get((prefix, v))
                    if new is None:
                        new = child[(prefix, v)] = len(hyps)
                        hyps.append(self._extend(hyp, v))
                    if hyps[new] is not None:
                        _add(nxt, new, 1, source + row[v])
            ranked = sorted(nxt.items(), key=lambda kv: -(_lae(*kv[1]) + hyps[kv[0]].lm))
            beams = dict(ranked[: self.beam])
        return self._best(beams, hyps)

    def _best(self, beams, hyps) -> str:
        finished = []
        for prefix, (pb, pnb) in beams.items():
            final = self._final(hyps[prefix])
            if final is not None:
                finished.append((_lae(pb, pnb) + final[0], final[1]))
        if not finished:  # every hypothesis ends inside a word: keep the complete words
            prefix = max(beams, key=lambda p: _lae(beams[p][0], beams[p][1]) + hyps[p].lm)
            return " ".join(hyps[prefix].words)
        return " ".join(max(finished, key=lambda f: f[0])[1])


def _lae(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) on Python floats (numpy's is slow on scalars)."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def _add(beams: dict[tuple[int, ...], list[float]], prefix, slot: int, value: float) -> None:
    cell = beams.setdefault(prefix, [NEG_INF, NEG_INF])
    cell[slot] = _lae(cell[slot], value)
