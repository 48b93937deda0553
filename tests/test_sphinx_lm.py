"""CMU Sphinx binary LMs (asrkd.sphinx_lm): files packed here in the documented layout, read
back through the lexicon's arpa_lm like their ARPA text; pocketsphinx's own files checked
against pocketsphinx's scores; broken files named."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from asrkd.config import EvalConfig
from asrkd.data.text import Tokenizer
from asrkd.data.validate import DataError
from asrkd.lexicon import SENTENCE_START, arpa_lm, eval_decoder
from asrkd.sphinx_lm import HEADER, LOGBASE, is_sphinx_lm, read_sphinx_lm

UNIT = math.log10(LOGBASE)  # one logmath unit in log10


def _pack(records: list[list[tuple[int, int]]]) -> bytes:
    """Bit-pack records of (value, width) fields LSB first, + 8 bytes of slack."""
    bits = sum(w for _, w in records[0])
    acc, shift = 0, 0
    for fields in records:
        for value, width in fields:
            assert 0 <= value < 1 << width
            acc |= value << shift
            shift += width
    return acc.to_bytes((len(records) * bits + 7) // 8, "little") + bytes(8)


def write_sphinx_lm(path: Path, unigrams, bigrams, trigrams=()) -> None:
    """A Sphinx trie LM file of order 2 (or 3 with trigrams): unigrams [(word, log10 P, log10
    b)], bigrams [(v, w, log10 P, log10 b)], trigrams [(u, v, w, log10 P)]; every distinct
    value gets its own quantisation entry, so only float32 rounding is lost."""
    words = [u[0] for u in unigrams]
    wid = {w: i for i, w in enumerate(words)}
    order = 3 if trigrams else 2
    big = sorted(bigrams, key=lambda b: (wid[b[1]], wid[b[0]]))  # the trie runs backwards
    tri = sorted(trigrams, key=lambda t: (wid[t[2]], wid[t[1]], wid[t[0]]))
    counts = [len(words), len(big), *([len(tri)] if trigrams else [])]

    def table(values):
        levels = sorted(set(values))
        tab = np.zeros(1 << 16, dtype="<f4")
        tab[: len(levels)] = np.array(levels) / UNIT
        return tab, {v: i for i, v in enumerate(levels)}

    out = HEADER + bytes([order]) + np.array(counts, "<u4").tobytes() + np.int32(1).tobytes()
    p2, p2i = table([b[2] for b in big])
    if trigrams:
        b2, b2i = table([b[3] for b in big])
        p3, p3i = table([t[3] for t in tri])
        out += p2.tobytes() + b2.tobytes() + p3.tobytes()
    else:
        out += p2.tobytes()
    first = [sum(1 for b in big if wid[b[1]] < i) for i in range(len(words) + 1)]
    ug = np.zeros(len(words) + 1, dtype=[("p", "<f4"), ("b", "<f4"), ("c", "<u4")])
    ug["p"][:-1] = [u[1] / UNIT for u in unigrams]
    ug["b"][:-1] = [u[2] / UNIT for u in unigrams]
    ug["c"] = first
    out += ug.tobytes()
    wb = len(words).bit_length()
    if trigrams:
        nb = len(tri).bit_length()
        starts = [
            sum(1 for t in tri if (wid[t[2]], wid[t[1]]) < (wid[b[1]], wid[b[0]])) for b in big
        ]
        recs = [
            [(wid[b[0]], wb), (b2i[b[3]], 16), (p2i[b[2]], 16), (s, nb)]
            for b, s in zip(big, starts)
        ]
        out += _pack([*recs, [(0, wb), (0, 16), (0, 16), (len(tri), nb)]])
        out += _pack([*([(wid[t[0]], wb), (p3i[t[3]], 16)] for t in tri), [(0, wb), (0, 16)]])
    else:
        out += _pack([*([(wid[b[0]], wb), (p2i[b[2]], 16)] for b in big), [(0, wb), (0, 16)]])
    text = b"".join(w.encode() + b"\0" for w in words)
    path.write_bytes(out + np.int32(len(text)).tobytes() + text)


UNIGRAMS = [
    ("</s>", -1.0, 0.0),
    ("<s>", -99.0, -0.3),
    ("MAD", -0.5, -0.2),
    ("RED", -0.6, -0.1),
    ("RAD", -1.5, 0.0),
]
BIGRAMS = [
    ("<s>", "MAD", -0.4, -0.05),
    ("MAD", "RAD", -0.2, 0.0),
    ("MAD", "RED", -3.0, 0.0),
    ("RED", "</s>", -0.3, 0.0),
]
ARPA = """\\data\\
ngram 1=5
ngram 2=4

\\1-grams:
-1.0\t</s>
-99\t<s>\t-0.3
-0.5\tMAD\t-0.2
-0.6\tRED\t-0.1
-1.5\tRAD

\\2-grams:
-0.4\t<s> MAD
-0.2\tMAD RAD
-3.0\tMAD RED
-0.3\tRED </s>

\\end\\
"""


def assert_close_lm(a, b) -> None:
    assert a.log_probs.keys() == b.log_probs.keys() and a.contexts.keys() == b.contexts.keys()
    for w in a.log_probs:
        for v in (SENTENCE_START, *a.log_probs):
            assert math.isclose(a.score(v, w), b.score(v, w), rel_tol=1e-5), (v, w)


@pytest.mark.parametrize("order", [2, 3])
def test_a_sphinx_file_is_read_like_its_arpa_text(tmp_path: Path, order: int) -> None:
    """The same LM as a Sphinx binary (order 2: bigrams in the last array; order 3: in a
    middle array with back-offs and child pointers) and as ARPA text: the same WordLM, the
    same decoder; the binary's own fields read back."""
    path = tmp_path / "lm.bin"
    trigrams = [("<s>", "MAD", "RAD", -0.1)] if order == 3 else []
    write_sphinx_lm(path, UNIGRAMS, BIGRAMS, trigrams)
    assert is_sphinx_lm(path) and not is_sphinx_lm(tmp_path / "missing")
    lm = read_sphinx_lm(path)
    assert lm.order == order and lm.words == tuple(u[0] for u in UNIGRAMS)
    assert np.allclose(lm.unigram, [u[1] for u in UNIGRAMS], atol=1e-5)
    listed = {
        (lm.words[v], lm.words[w]): p for (v, w), p in zip(lm.pairs.tolist(), lm.pair_logprob)
    }
    assert listed.keys() == {(b[0], b[1]) for b in BIGRAMS}
    for v, w, p, _ in BIGRAMS:
        assert math.isclose(listed[v, w], p, abs_tol=1e-5)
    text = tmp_path / "lm.arpa"
    text.write_text(ARPA)
    tok = Tokenizer()
    for n in (1, 2):
        assert_close_lm(arpa_lm(path, n, tok), arpa_lm(text, n, tok))
    cfg = EvalConfig(decoder="lexicon", arpa=str(path), lm_order=2, beam=8)
    dec = eval_decoder(cfg, tok, None, "m", lambda order: pytest.fail("no transcripts"))
    assert dec is not None and dec.vocabulary == "arpa:lm.bin"


def test_a_broken_sphinx_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "lm.bin"
    write_sphinx_lm(path, UNIGRAMS, BIGRAMS)
    whole = path.read_bytes()
    for cut in (len(HEADER) + 3, len(whole) // 2, len(whole) - 3):
        path.write_bytes(whole[:cut])
        with pytest.raises(DataError, match=r"lm\.bin: not a readable Sphinx trie LM"):
            arpa_lm(path, 2, Tokenizer())
    with pytest.raises(DataError, match="cannot read"):
        read_sphinx_lm(tmp_path / "none.bin")


@pytest.mark.parametrize("name", ["en-us-phone.lm.bin", "en-us.lm.bin"])
def test_pocketsphinx_files_match_pocketsphinx_scores(name: str) -> None:
    """Every unigram and 3,000 of the word pairs (all of them for the phone LM) of the LMs
    pocketsphinx ships scored as pocketsphinx scores them, to one logmath unit (it truncates
    to whole units)."""
    ps = pytest.importorskip("pocketsphinx")
    path = Path(ps.get_model_path()) / "en-us" / name
    lm = read_sphinx_lm(path)
    oracle = ps.NGramModel(ps.Config(), ps.LogMath(), str(path))
    assert lm.order == 3 and len(lm.words) > 40
    for i in range(len(lm.words)):
        if lm.words[i] != "<s>":
            assert abs(oracle.prob([lm.words[i]]) * UNIT - lm.unigram[i]) <= 1.01 * UNIT
    rows = np.random.default_rng(0).permutation(len(lm.pairs))[:3000]
    for r in rows.tolist():
        v, w = lm.pairs[r]
        got = oracle.prob([lm.words[w], lm.words[v]]) * UNIT  # word first, then its history
        assert abs(got - lm.pair_logprob[r]) <= 1.01 * UNIT, (lm.words[v], lm.words[w])


def test_sphinx_pairs_as_a_bigram_source(tmp_path: Path, monkeypatch) -> None:
    """bigrams "sphinx": a listed pair keeps the file's P(w | v), the rest of v's mass goes to
    the unigram, so every context sums to 1; "train+sphinx" puts the transcripts' pairs over
    it; the sources' order is fixed."""
    from asrkd import lexicon
    from asrkd.config import ConfigError, parse_bigrams
    from asrkd.lexicon import WordLM, config_lm, sphinx_bigram

    path = tmp_path / "lm.bin"
    write_sphinx_lm(path, UNIGRAMS, BIGRAMS)
    monkeypatch.setattr(lexicon, "_sphinx_pairs", lambda: lexicon.sphinx_pairs(path))
    unigram = WordLM.from_counts({"mad": 5, "red": 3, "rad": 2})
    lm = sphinx_bigram(unigram)
    listed = 10**-0.2 + 10**-3.0  # MAD RAD, MAD RED: both in the vocabulary
    p_rad = 10**-0.2 + (1 - listed) * 0.2
    assert math.isclose(math.exp(lm.score("mad", "rad")), p_rad, rel_tol=1e-5)
    assert math.isclose(math.exp(lm.score("mad", "mad")), (1 - listed) * 0.5, rel_tol=1e-5)
    p_mad = 10**-0.4 + (1 - 10**-0.4) * 0.5
    assert math.isclose(math.exp(lm.score(SENTENCE_START, "mad")), p_mad, rel_tol=1e-5)
    for v in (SENTENCE_START, "mad", "red"):
        total = sum(math.exp(lm.score(v, w)) for w in unigram.log_probs)
        assert math.isclose(total, 1.0, rel_tol=1e-5)
    assert "red" not in lm.contexts  # RED </s> only: the unigram's, as a context never listed

    train = WordLM.from_texts(["mad red", "red mad", "mad rad"], order=2)
    cfg = EvalConfig(decoder="lexicon", lm_order=2, bigrams="train+sphinx")
    both = config_lm(cfg, Tokenizer(), lambda order: train)
    expected = train.over(sphinx_bigram(train))
    for v in (SENTENCE_START, "mad", "red", "rad"):
        for w in ("mad", "red", "rad"):
            assert math.isclose(both.score(v, w), expected.score(v, w))
    assert parse_bigrams("train+books+sphinx") == ("train", "books", "sphinx")
    with pytest.raises(ConfigError, match="in that order"):
        EvalConfig(lm_order=2, bigrams="sphinx+train")


def test_pocketsphinx_english_pairs() -> None:
    pytest.importorskip("pocketsphinx")
    from asrkd.lexicon import _sphinx_pairs

    pairs = {(v, w): p for v, w, p in _sphinx_pairs()}
    assert len(pairs) > 1_900_000
    assert math.isclose(pairs["of", "the"], 10**-0.6986, rel_tol=1e-3)
    assert (SENTENCE_START, "the") in pairs and not any(w.startswith("<") for _, w in pairs)
