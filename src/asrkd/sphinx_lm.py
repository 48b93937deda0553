"""CMU Sphinx's binary n-gram LMs (`.lm.bin`, "Trie Language Model"), read without pocketsphinx.

pocketsphinx ships such files (its US English LM: model/en-us/en-us.lm.bin, 72,547 words,
2,051,541 word pairs, 1,669,625 triples), and CMU Sphinx publishes them for other languages.
pocketsphinx's only converter to ARPA text (`NGramModel.write(path, "arpa")`) crashes half-way
on its own English LM (cmusphinx/sphinxbase issue 89; pocketsphinx 5.0.4 and 5.1.1 alike), so
asrkd reads the binary itself; `eval.arpa` / export's `arpa` take such a file like an ARPA one
(asrkd.lexicon.arpa_lm). Only the 1- and 2-grams are decoded: the lexicon's LM is a bigram.

Layout (little-endian; sphinxbase's ngram_model_trie.c, lm_trie.c, lm_trie_quant.c):
    "Trie Language Model" (19 bytes), uint8 order, uint32 counts[order]
    if order > 1: int32 (1), then float32[65536] tables: per middle order (2 .. order-1) the
        probabilities and the back-off weights, then the highest order's probabilities
    unigrams: (counts[0] + 1) x {float32 prob, float32 back-off, uint32 first child}
    per order 2 .. order, a bit-packed array of counts[n-1] + 1 records, LSB first, each
        word id (bit_length(counts[0]) bits) | middle orders: back-off index (16),
        probability index (16), first child (bit_length(counts[n]) bits) | highest order:
        probability index (16); byte-rounded, then 8 bytes of slack
    int32 K, then K bytes: the words, NUL-terminated, in id order
The trie runs backwards: a unigram's children are the words that came before it, so the
2-gram record under word w with word id v is the pair (v, w). Scores are in logmath units
(log base 1.0001, pocketsphinx's default; the file does not say): log10 = value * log10(1.0001).
The header's counts are the sizes the arrays were allocated with; the records really written
are the parent level's last child pointer (en-us.lm.bin leaves 6 bigram slots empty).

Checked against pocketsphinx's own scores (NGramModel.prob) on every n-gram of en-us.lm.bin
and of en-us-phone.lm.bin: equal within one logmath unit (docs/benchmarks.md, round 14).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrkd.data.validate import DataError

HEADER = b"Trie Language Model"
QUANT_BITS = 16  # probability and back-off indices (lm_trie_quant.c)
LOGBASE = 1.0001  # pocketsphinx's -logbase, with which its models are written


def is_sphinx_lm(path: str | Path) -> bool:
    """Whether the file starts like a Sphinx trie LM."""
    try:
        with open(path, "rb") as f:
            return f.read(len(HEADER)) == HEADER
    except OSError:
        return False


@dataclass(frozen=True)
class SphinxBigrams:
    """A Sphinx LM's 1- and 2-grams. N words, P listed pairs.

    words: N strings, by id. unigram, unigram_backoff: (N,) log10 P(w) and log10 b(w).
    pairs: (P, 2) word ids (previous word, word); pair_logprob: (P,) log10 P(word | previous).
    """

    order: int
    words: tuple[str, ...]
    unigram: np.ndarray
    unigram_backoff: np.ndarray
    pairs: np.ndarray
    pair_logprob: np.ndarray

    def entries(self, order: int) -> Iterator[tuple[int, tuple[str, ...], float, float]]:
        """(n, words, log10 P, log10 back-off) as an ARPA file lists them, up to `order`."""
        for word, p, b in zip(self.words, self.unigram.tolist(), self.unigram_backoff.tolist()):
            yield 1, (word,), p, b
        if order < 2:
            return
        words = self.words
        for (v, w), p in zip(self.pairs.tolist(), self.pair_logprob.tolist()):
            yield 2, (words[v], words[w]), p, 0.0


def _bits(max_value: int) -> int:
    return int(max_value).bit_length()


def _packed_bytes(records: int, record_bits: int) -> int:
    """Bytes of a bit-packed array of `records` + 1 records (lm_trie.c's base_size)."""
    return ((1 + records) * record_bits + 7) // 8 + 8


def _read_fields(mem: np.ndarray, offsets: np.ndarray, n_bits: int) -> np.ndarray:
    """The n_bits-wide fields at bit `offsets` (uint64, (R,)) of LSB-first packed bytes
    `mem` (padded by 8 or more bytes): (R,) uint64."""
    if n_bits == 0:
        return np.zeros(len(offsets), dtype=np.uint64)
    first = (offsets >> np.uint64(3)).astype(np.int64)
    value = np.zeros(len(offsets), dtype=np.uint64)
    for k in range((n_bits + 14) // 8):  # the bytes a field spans, whatever its bit offset
        value |= mem[first + k].astype(np.uint64) << np.uint64(8 * k)
    return (value >> (offsets & np.uint64(7))) & np.uint64((1 << n_bits) - 1)


def read_sphinx_lm(path: str | Path, logbase: float = LOGBASE) -> SphinxBigrams:
    """The 1- and 2-grams of a Sphinx trie LM file (module docstring); a file that is not one,
    or is truncated or inconsistent, is a DataError naming it."""
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the Sphinx LM ({err})") from err
    try:
        return _parse(buf, math.log10(logbase))
    except (ValueError, IndexError) as err:  # numpy reads past the end, a bad count
        raise DataError(f"{path}: not a readable Sphinx trie LM ({err})") from err


def _parse(buf: bytes, to_log10: float) -> SphinxBigrams:
    if not buf.startswith(HEADER):
        raise ValueError(f"it does not start with {HEADER.decode()!r}")
    pos = len(HEADER)
    order = buf[pos]
    pos += 1
    if not 1 <= order <= 9:
        raise ValueError(f"order {order}")
    counts = [int(c) for c in np.frombuffer(buf, "<u4", order, pos)]
    pos += 4 * order
    table = 1 << QUANT_BITS
    pair_probs = None
    if order > 1:
        pos += 4  # an int32 left from an older quantisation field
        tables = [
            np.frombuffer(buf, "<f4", table, pos + 4 * table * i) for i in range(2 * order - 3)
        ]
        pos += 4 * table * (2 * order - 3)
        # per middle order its probabilities, then its back-offs; the highest order's
        # probabilities last: the 2-grams' probabilities come first either way
        pair_probs = tables[0]
    n_words = counts[0]
    unigram_type = np.dtype([("prob", "<f4"), ("backoff", "<f4"), ("child", "<u4")])
    unigrams = np.frombuffer(buf, unigram_type, n_words + 1, pos)
    pos += unigram_type.itemsize * (n_words + 1)
    word_bits = _bits(n_words)
    pairs = np.zeros((0, 2), dtype=np.int64)
    pair_logprob = np.zeros(0)
    for n in range(2, order + 1):
        middle = n < order
        record_bits = word_bits + (2 * QUANT_BITS + _bits(counts[n]) if middle else QUANT_BITS)
        size = _packed_bytes(counts[n - 1], record_bits)
        if pos + size > len(buf):
            raise ValueError(f"the {n}-gram array ends past the file's end")
        if n == 2:
            used = int(unigrams["child"][n_words])
            if not 0 <= used <= counts[1]:
                raise ValueError(f"{used} 2-grams written, {counts[1]} allocated")
            parent_of = np.repeat(np.arange(n_words), np.diff(unigrams["child"].astype(np.int64)))
            if len(parent_of) != used:
                raise ValueError("the unigrams' child pointers do not cover the 2-grams")
            mem = np.frombuffer(buf, np.uint8, size, pos)
            offsets = np.arange(used, dtype=np.uint64) * np.uint64(record_bits)
            previous = _read_fields(mem, offsets, word_bits).astype(np.int64)
            if used and previous.max() >= n_words:
                raise ValueError("a 2-gram names a word id past the vocabulary")
            prob_at = word_bits + (QUANT_BITS if middle else 0)
            index = _read_fields(mem, offsets + np.uint64(prob_at), QUANT_BITS).astype(np.int64)
            pairs = np.stack([previous, parent_of], axis=1)
            pair_logprob = pair_probs[index].astype(np.float64) * to_log10
        pos += size
    n_chars = int(np.frombuffer(buf, "<i4", 1, pos)[0])
    pos += 4
    if n_chars < 0 or pos + n_chars > len(buf):
        raise ValueError("the word list ends past the file's end")
    words = buf[pos : pos + n_chars].split(b"\0")
    if words and words[-1] == b"":
        words.pop()
    if len(words) != n_words:
        raise ValueError(f"{len(words)} words listed, the header says {n_words}")
    return SphinxBigrams(
        order=order,
        words=tuple(w.decode("utf-8", errors="replace") for w in words),
        unigram=unigrams["prob"][:n_words].astype(np.float64) * to_log10,
        unigram_backoff=unigrams["backoff"][:n_words].astype(np.float64) * to_log10,
        pairs=pairs,
        pair_logprob=pair_logprob,
    )
