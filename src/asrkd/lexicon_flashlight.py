"""The lexicon search in C++: flashlight-text's LexiconDecoder over a KenLM copy of the word LM.

asrkd.lexicon's Python search is the reference; this engine runs the same search (CTC prefix
beam search over the vocabulary's words, the word LM's score and word bonus added when a word
completes, the unigram look-ahead inside words) in flashlight-text, the C++ decoder behind
torchaudio's `ctc_decoder` and wav2letter. On the real-speech recipe it searches ~5x faster at
the same dev WER (docs/benchmarks.md). How asrkd's search maps onto it:
- Word LM: the WordLM is written as an ARPA file (the bigram's listed pairs as 2-grams, each
  context's back-off weight as its 1-gram's back-off; a trigram's triples as 3-grams, their
  contexts' back-offs on the 2-grams: the same P(w | v) and P(w | u, v) to float precision) and
  read by KenLM; an exported file carries that ARPA text, which KenLM reads as it is. KenLM scores in log10: lm_weight is scaled by ln 10 to weigh ln P as asrkd does.
  asrkd's LM has no end-of-sentence event: </s> gets probability 1 after every context.
- Lexicon: each word spelt with the tokenizer's characters followed by the space, as the
  Python search completes a word at its space; the trie is smeared with each word's unigram
  plus word_bonus / lm_weight (the look-ahead, bonus included as in the Python search: without
  it, half-spelt words lost to hypotheses between words and deletions rose, dev WER +0.5).
- Where they differ: flashlight merges hypotheses that reach the same trie node and LM state
  (log-adding their scores, keeping the best one's words) where the Python search merges only
  identical token sequences, and it lets the space repeat between words.
- Token prune: tokens at or below `prune` are -inf at that frame (blank always counts), as the
  Python search skips them.
- End of the utterance: as in the Python search, flashlight's hypotheses at the last frame
  are finished here (flashlight's own end would drop a word still being spelt): inside a word,
  the letters spelt so far end it if they form a word (its LM score replaces the look-ahead),
  else the best word they can still become, with the look-ahead's score.
Character tokenizers only: a BPE tokenizer has no separator token to close words with; the
Python engine searches those.

Dimension legend: T' output frames, V tokens (blank included).
"""

from __future__ import annotations

import bisect
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from asrkd.data.validate import DataError
from asrkd.lexicon import SENTENCE_START, WordLM

LN10 = math.log(10.0)
UNK = "<unk>"
END = "</s>"
LAST_CHAR = chr(0x10FFFF)  # sorts after every character: prefix + it bounds prefix's words


def _log10(p: float) -> str:
    return f"{math.log10(p):.7g}" if p > 0 else "-99"


def write_arpa(lm: WordLM, path: str | Path) -> None:
    """`lm` as an ARPA file KenLM reads: P(w) as 1-grams, each bigram context's back-off weight
    on its 1-gram, its listed pairs as 2-grams with P(w | v) = seen(w) + b(v) P(w); a trigram's
    listed triples as 3-grams with P(w | u, v) = seen(u v w) + b(u v) P(w | v), b(u v) on the
    2-gram (u, v), which is listed (with its own P(v | u)) wherever it is a context, as is every
    3-gram's last pair (v, w); </s> has probability 1 after every context (asrkd's word LMs do
    not model the sentence end). The n-grams are streamed through temporary files: a trigram's
    millions of lines are never held in memory."""
    contexts, triples = lm.contexts, lm.triples
    with tempfile.TemporaryDirectory(prefix="asrkd-arpa-") as folder:
        body_2, body_3 = Path(folder) / "2-grams", Path(folder) / "3-grams"
        with open(body_2, "w", encoding="utf-8") as f2, open(body_3, "w", encoding="utf-8") as f3:
            n_2 = _write_pairs(lm, f2)
            n_3 = _write_triples(lm, f2, f3) if triples is not None else (0, 0)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"\\data\\\nngram 1={len(lm.log_probs) + 3}\n")
            f.write(f"ngram 2={n_2 + n_3[0]}\n")
            if n_3[1]:
                f.write(f"ngram 3={n_3[1]}\n")
            f.write("\n\\1-grams:\n")
            f.write(f"-99\t{UNK}\n0\t{END}\n")
            start = contexts.get(SENTENCE_START)
            f.write(
                f"-99\t{SENTENCE_START}\t{start[0] / LN10:.7g}\n"
                if start
                else f"-99\t{SENTENCE_START}\n"
            )
            for word, log_p in lm.log_probs.items():
                backoff = contexts.get(word)
                bow = f"\t{backoff[0] / LN10:.7g}" if backoff else ""
                f.write(f"{log_p / LN10:.7g}\t{word}{bow}\n")
            for name, body in (("2", body_2), ("3", body_3))[: 2 if n_3[1] else 1]:
                f.write(f"\n\\{name}-grams:\n")
                with open(body, encoding="utf-8") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
            f.write("\n\\end\\\n")


def _write_pairs(lm: WordLM, f) -> int:
    """write_arpa's 2-gram lines of the bigram's listed pairs (with the trigram contexts'
    back-offs); their number."""
    triples = lm.triples
    bows: dict[int, float] = {}  # a trigram context's key -> log10 b(u v)
    if triples is not None:
        bows = dict(zip(triples.context.tolist(), (triples.backoff / LN10).tolist()))
        ids, base = triples.ids, len(triples.words) + 1
    n = 0
    for prev, (backoff, seen) in lm.contexts.items():
        if prev != SENTENCE_START and prev not in lm.log_probs:
            continue  # a context no 1-gram names (KenLM needs one): P(. | prev) is never asked
        rest = math.exp(backoff)
        at = ids[prev] * base if bows else 0
        for word, p in seen.items():
            bow = bows.get(at + ids[word]) if bows else None
            tail = f"\t{bow:.7g}\n" if bow else "\n"
            f.write(f"{_log10(p + rest * math.exp(lm.log_probs[word]))}\t{prev} {word}{tail}")
        f.write(f"0\t{prev} {END}\n")
        n += len(seen) + 1
    if SENTENCE_START not in lm.contexts:  # KenLM reads no model without 2-grams (a unigram)
        f.write(f"0\t{SENTENCE_START} {END}\n")
        n += 1
    return n


def _write_triples(lm: WordLM, f2, f3) -> tuple[int, int]:
    """write_arpa's 3-gram lines, and the 2-grams they need that the bigram does not list (a
    context (u, v), with its back-off; a last pair (v, w); v </s>); their numbers."""
    listed = lm.contexts
    added: set[tuple[str, str]] = set()

    def pair(v: str, w: str, p: float, bow: float = 0.0) -> int:
        if w in listed.get(v, (0.0, {}))[1] or (v, w) in added or (w == END and v in listed):
            return 0
        added.add((v, w))
        f2.write(f"{_log10(p)}\t{v} {w}" + (f"\t{bow:.7g}\n" if bow else "\n"))
        return 1

    n_2 = n_3 = 0
    for u, v, backoff, after in lm.triples.rows():
        n_2 += pair(u, v, math.exp(lm.score(u, v)), backoff / LN10)
        rest = math.exp(backoff)
        for word, seen in after:
            lower = math.exp(lm.score(v, word))
            n_2 += pair(v, word, lower)
            f3.write(f"{_log10(seen + rest * lower)}\t{u} {v} {word}\n")
        f3.write(f"0\t{u} {v} {END}\n")
        n_2 += pair(v, END, 1.0)
        n_3 += len(after) + 1
    return n_2, n_3


@contextmanager
def _quiet_stderr():
    """KenLM prints a progress bar to the process's stderr (file descriptor 2) while reading."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _import_flashlight():
    try:
        from flashlight.lib.text import decoder, dictionary
        from flashlight.lib.text.decoder.kenlm import KenLM
    except ImportError as err:
        raise ImportError(
            "eval.lexicon_engine=flashlight needs the flashlight-text package (an asrkd "
            "dependency): pip install flashlight-text, or set lexicon_engine=python"
        ) from err
    return decoder, dictionary, KenLM


def arpa_words(path: str | Path) -> list[str]:
    """The words of an ARPA file written by write_arpa, in its 1-gram order, without <unk>, </s>
    and <s> (the WordLM's log_probs keys), read line by line up to the 2-grams."""
    words, in_1grams = [], False
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("\\"):
                    if in_1grams:
                        break
                    in_1grams = line.strip() == "\\1-grams:"
                    continue
                fields = line.split()
                if in_1grams and len(fields) >= 2 and fields[1] not in (UNK, END, SENTENCE_START):
                    words.append(fields[1])
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not an ARPA text ({err})") from err
    return words


@contextmanager
def lm_arpa_file(lm: WordLM):
    """A temporary ARPA file of `lm` (write_arpa), removed on exit."""
    with tempfile.TemporaryDirectory(prefix="asrkd-lm-") as folder:
        arpa = Path(folder) / "lm.arpa"
        write_arpa(lm, arpa)
        yield arpa


class FlashlightSearch:
    """flashlight-text's CTC lexicon beam search over `lm`'s words for a character tokenizer
    (its symbols include " "), with asrkd's scores (module docstring)."""

    def __init__(
        self,
        symbols: list[str],
        blank: int,
        spellings: dict[str, list[int]],
        words: Iterable[str],
        arpa: str | Path,
        beam: int,
        lm_weight: float,
        word_bonus: float,
        prune: float,
    ) -> None:
        """words: the LM's vocabulary in its 1-gram order; arpa: the file KenLM reads it from,
        as write_arpa writes a WordLM (read here, not kept)."""
        fl, fl_dict, kenlm = _import_flashlight()
        self.blank, self.space, self.prune = blank, symbols.index(" "), prune
        self.symbols = symbols
        self.n_tokens = len(symbols)
        self.words = fl_dict.Dictionary()
        for word in (*words, UNK):
            self.words.add_entry(word)
        try:
            with _quiet_stderr():
                self.lm = kenlm(str(arpa), self.words)
        except RuntimeError as err:  # KenLM's C++ exceptions, as pybind11 passes them on
            raise DataError(f"{arpa}: KenLM cannot read this ARPA text ({err})") from err
        self.trie = fl.Trie(self.n_tokens, self.space)
        # The look-ahead's score of a word: its unigram and, as in the Python search, its bonus
        # (flashlight weighs trie scores by lm_weight, and takes the look-ahead back out when
        # the word completes, adding the LM's score and word_score instead).
        nothing = self.lm.start(True)  # no context: the unigram
        bonus = word_bonus / (lm_weight * LN10) if lm_weight > 0 else 0.0
        unigram = {}
        for word, ids in spellings.items():
            index = self.words.get_index(word)
            unigram[word] = self.lm.score(nothing, index)[1]
            self.trie.insert([*ids, self.space], index, unigram[word] + bonus)
        self.trie.smear(fl.SmearingMode.MAX)
        # the words in order and their unigrams: those a prefix can become are a slice
        self.sorted_words = sorted(unigram)
        self.sorted_scores = np.array([unigram[w] for w in self.sorted_words])
        self.lm_weight, self.word_bonus = lm_weight * LN10, word_bonus
        self.bonus_ahead = word_bonus if lm_weight > 0 else 0.0  # the bonus the look-ahead has
        options = fl.LexiconDecoderOptions(
            beam_size=beam,
            beam_size_token=self.n_tokens,
            beam_threshold=1e30,
            lm_weight=lm_weight * LN10,
            word_score=word_bonus,
            unk_score=-math.inf,
            sil_score=0.0,
            log_add=True,
            criterion_type=fl.CriterionType.CTC,
        )
        self.decoder = fl.LexiconDecoder(
            options, self.trie, self.lm, self.space, blank, self.words.get_index(UNK), [], False
        )

    def __contains__(self, word: str) -> bool:
        i = bisect.bisect_left(self.sorted_words, word)
        return i < len(self.sorted_words) and self.sorted_words[i] == word

    def emissions(self, log_probs: np.ndarray) -> np.ndarray:
        """log_probs (T', V) -> (T', V) float32, C order: tokens at or below the prune -inf
        (blank kept)."""
        out = np.array(log_probs, dtype=np.float32, order="C")
        keep = out > self.prune
        keep[:, self.blank] = True
        out[~keep] = -np.inf
        return out

    def decode(self, log_probs: np.ndarray) -> str:
        """log_probs (T', V): log-softmax outputs of one utterance's valid frames -> text."""
        if len(log_probs) == 0:
            return ""
        emissions = self.emissions(log_probs)
        self.decoder.decode_begin()
        self.decoder.decode_step(emissions.ctypes.data, *emissions.shape)
        finals = [self._final(h) for h in self.decoder.get_all_final_hypothesis()]
        return " ".join(max(finals, key=lambda f: f[0])[1]) if finals else ""

    def _final(self, hyp) -> tuple[float, list[str]]:
        """A hypothesis's score and words once the utterance ends (module docstring): between
        words as it stands; inside a word, that word if its letters spell one (its LM score
        and bonus in place of the look-ahead), else the best word they can still become (the
        look-ahead's word, with the look-ahead's score and the bonus)."""
        words = [self.words.get_entry(i) for i in hyp.words if i >= 0]
        letters, prev = [], -1
        for token in hyp.tokens[1:]:  # [0]: the start (the space); then one token per frame
            if token != prev and token != self.blank:
                letters = [] if token == self.space else [*letters, token]
            prev = token
        if not letters:
            return hyp.score, words
        prefix = "".join(self.symbols[i] for i in letters)
        lo = bisect.bisect_left(self.sorted_words, prefix)
        hi = bisect.bisect_left(self.sorted_words, prefix + LAST_CHAR, lo)
        best = lo + int(np.argmax(self.sorted_scores[lo:hi]))
        look = self.lm_weight * self.sorted_scores[best] + self.bonus_ahead  # what it carries
        if self.sorted_words[lo] != prefix:
            extra = self.word_bonus - self.bonus_ahead  # the look-ahead's score is the word's
            return hyp.score + extra, [*words, self.sorted_words[best]]
        state = self.lm.start(False)
        for word in words:
            state = self.lm.score(state, self.words.get_index(word))[0]
        lm = self.lm_weight * self.lm.score(state, self.words.get_index(prefix))[1]
        return hyp.score - look + lm + self.word_bonus, [*words, prefix]
