"""CMU Sphinx binary LMs (asrkd.sphinx_lm): files packed here in the documented layout, read
back through the lexicon's arpa_lm like their ARPA text (bigrams and trigrams); pocketsphinx's
own files checked against pocketsphinx's scores; their pairs and triples as the lexicon's
sources; broken files named."""

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


BIGRAMS_3 = [  # the pairs again, (MAD RED) now a trigram context with a back-off
    ("<s>", "MAD", -0.4, -0.05),
    ("MAD", "RAD", -0.2, 0.0),
    ("MAD", "RED", -3.0, -0.2),
    ("RED", "</s>", -0.3, 0.0),
]
TRIGRAMS = [
    ("<s>", "MAD", "RAD", -0.1),
    ("<s>", "MAD", "RED", -2.5),
    ("MAD", "RED", "</s>", -0.05),
]


def arpa_text(unigrams, bigrams, trigrams) -> str:
    """The ARPA text of the lists write_sphinx_lm packs."""
    out = f"\\data\\\nngram 1={len(unigrams)}\nngram 2={len(bigrams)}\n"
    out += f"ngram 3={len(trigrams)}\n\n\\1-grams:\n"
    out += "".join(f"{p}\t{w}\t{b}\n" for w, p, b in unigrams)
    out += "\n\\2-grams:\n" + "".join(f"{p}\t{v} {w}\t{b}\n" for v, w, p, b in bigrams)
    out += "\n\\3-grams:\n" + "".join(f"{p}\t{u} {v} {w}\n" for u, v, w, p in trigrams)
    return out + "\n\\end\\\n"


def test_a_trigram_sphinx_file_is_read_like_its_arpa_text(tmp_path: Path) -> None:
    """The 3-grams of a Sphinx binary (under their last pair's record, the first word last)
    read back with their pairs' back-offs; lm_order 3 over the binary and over its ARPA text
    gives the same trigram, P(w | u, v) the listed one or b(u v) P(w | v)."""
    path, text = tmp_path / "lm.bin", tmp_path / "lm.arpa"
    write_sphinx_lm(path, UNIGRAMS, BIGRAMS_3, TRIGRAMS)
    text.write_text(arpa_text(UNIGRAMS, BIGRAMS_3, TRIGRAMS))
    lm = read_sphinx_lm(path)
    pairs, triples = lm.higher
    got = {tuple(lm.words[i] for i in ids): (p, b) for ids, p, b in
           zip(pairs.ids.tolist(), pairs.logprob, pairs.backoff)}  # fmt: skip
    for v, w, p, b in BIGRAMS_3:
        assert np.allclose(got[v, w], (p, b), atol=1e-5)
    got = {
        tuple(lm.words[i] for i in ids): p for ids, p in zip(triples.ids.tolist(), triples.logprob)
    }
    assert got.keys() == {t[:3] for t in TRIGRAMS}
    for u, v, w, p in TRIGRAMS:
        assert math.isclose(got[u, v, w], p, abs_tol=1e-5)
    assert sum(n == 3 for n, *_ in lm.entries(3)) == 3 and all(n < 3 for n, *_ in lm.entries(2))
    tok = Tokenizer()
    binary, arpa = arpa_lm(path, 3, tok), arpa_lm(text, 3, tok)
    assert binary.order == arpa.order == 3
    words = list(binary.log_probs)
    for history in [(), *([w] for w in words), *([u, v] for u in words for v in words)]:
        for w in words:
            a, b = binary.next_score(tuple(history), w), arpa.next_score(tuple(history), w)
            assert math.isclose(a, b, rel_tol=1e-5), (history, w)
    ln10 = math.log(10)
    assert math.isclose(binary.next_score(("mad",), "rad"), -0.1 * ln10, rel_tol=1e-5)
    backed_off = (-0.05 + -0.2 + -0.5) * ln10  # b(<s> mad) b(mad) P(mad)
    assert math.isclose(binary.next_score(("mad",), "mad"), backed_off, rel_tol=1e-5)
    write_sphinx_lm(tmp_path / "two.bin", UNIGRAMS, BIGRAMS)
    with pytest.raises(DataError, match="lm_order=3 but the file has no 3-grams"):
        arpa_lm(tmp_path / "two.bin", 3, tok)


def test_sphinx_triples_as_a_trigram_source(tmp_path: Path, monkeypatch) -> None:
    """lm_order 3: Sphinx's listed triples in the vocabulary keep their P(w | u, v), the rest
    of the context's mass goes to the bigram below (train+sphinx here), so every context sums
    to 1; the KenLM copy the C++ search reads scores every word sequence alike; lm_order 3
    without the Sphinx source is a config error."""
    from asrkd.config import ConfigError
    from asrkd.lexicon import WordLM, config_lm, sources, sphinx_bigram
    from asrkd.lexicon_flashlight import LN10, lm_arpa_file, write_arpa

    path = tmp_path / "lm.bin"
    write_sphinx_lm(path, UNIGRAMS, BIGRAMS_3, TRIGRAMS)
    monkeypatch.setattr(sources, "_sphinx_pairs", lambda: sources.sphinx_pairs(path))
    monkeypatch.setattr(sources, "_sphinx_triples", lambda: sources.sphinx_triples(path))
    train = WordLM.from_texts(["mad red", "red mad", "mad rad rad"], order=2)
    cfg = EvalConfig(decoder="lexicon", lm_order=3, bigrams="train+sphinx")
    lm = config_lm(cfg, Tokenizer(), lambda order: train)
    bigram = train.over(sphinx_bigram(train))
    words = list(lm.log_probs)
    assert lm.order == 3 and len(lm.triples) == 2  # (MAD RED </s>): </s> is no word
    listed = 10**-0.1 + 10**-2.5
    for w, p_listed in (("rad", 10**-0.1), ("red", 10**-2.5), ("mad", 0.0)):
        expected = p_listed + (1 - listed) * math.exp(bigram.score("mad", w))
        assert math.isclose(math.exp(lm.next_score(("mad",), w)), expected, rel_tol=1e-6)
    for history in [(), *([w] for w in words), *([u, v] for u in words for v in words)]:
        total = sum(math.exp(lm.next_score(tuple(history), w)) for w in words)
        assert math.isclose(total, 1.0, rel_tol=1e-5), history  # pairs: 6 digits
        if len(history) == 2 and history[0] != "mad":  # (u, v) not listed: the bigram's
            for w in words:
                assert lm.next_score(tuple(history), w) == bigram.score(history[1], w)
    # KenLM reads the ARPA copy (3-grams, their contexts' back-offs) as the same LM
    from asrkd.lexicon_flashlight import _import_flashlight

    _, dictionary, kenlm = _import_flashlight()
    index = dictionary.Dictionary()
    for w in (*words, "<unk>"):
        index.add_entry(w)
    with lm_arpa_file(lm) as arpa:
        model = kenlm(str(arpa), index)
        assert arpa_lm(arpa, 3, Tokenizer()).order == 3
    for sentence in [(u, v, w) for u in words for v in words for w in words]:
        state, total_kenlm, total = model.start(False), 0.0, 0.0
        for i, w in enumerate(sentence):
            state, score = model.score(state, index.get_index(w))
            total_kenlm += score * LN10
            total += lm.next_score(sentence[:i], w)
        assert math.isclose(total_kenlm, total, abs_tol=1e-5), sentence
    write_arpa(bigram, tmp_path / "two.arpa")  # a bigram's file has no 3-gram section
    assert "3-grams" not in (tmp_path / "two.arpa").read_text()
    with pytest.raises(ConfigError, match="lm_order=3 takes its word triples"):
        EvalConfig(decoder="lexicon", lm_order=3, bigrams="train+books")
    EvalConfig(decoder="lexicon", lm_order=3, arpa=str(path))  # an LM file of its own


@pytest.mark.parametrize("engine", ["python", "flashlight"])
def test_the_trigram_decides_and_travels_in_an_exported_file(tmp_path: Path, engine: str) -> None:
    """ "mad" then e/a heard alike: the bigram says rad after mad, the triple (<s> mad red) says
    red: lm_order 2 reads "mad rad", 3 "mad red", in both engines; an exported file carries
    the trigram (ARPA text with 3-grams) and decodes with it."""
    import json

    from asrkd.config import ExportConfig
    from asrkd.export import lexicon_metadata
    from asrkd.ondevice import lexicon_from_metadata

    path = tmp_path / "lm.bin"
    flip = [("<s>", "MAD", "RED", -0.05), ("<s>", "MAD", "RAD", -2.0)]
    write_sphinx_lm(path, UNIGRAMS, BIGRAMS_3, flip)
    tok = Tokenizer()
    frames = []
    for i in tok.encode("mad red"):
        frames += [i, i, tok.blank_id]
    lp = np.full((len(frames), tok.vocab_size), math.log(0.1 / (tok.vocab_size - 1)))
    lp[np.arange(len(frames)), frames] = math.log(0.9)
    e, a = tok.encode("e")[0], tok.encode("a")[0]
    second = [j for j in range(len(lp)) if lp[j].argmax() == e]
    lp[second, a] = lp[second, e]
    weights = {"beam": 8, "lm_weight": 1.0, "word_bonus": 0.0, "lexicon_engine": engine}
    for order, text in ((2, "mad rad"), (3, "mad red")):
        cfg = EvalConfig(decoder="lexicon", arpa=str(path), lm_order=order, **weights)
        dec = eval_decoder(cfg, tok, None, "m", lambda order: pytest.fail("no transcripts"))
        assert dec.lm_order == order and dec.decode(lp) == text
    assert cfg.tag.endswith("-arpa-lm-trigram" + ("-fl" if engine == "flashlight" else ""))
    meta = {"tokenizer": json.loads(tok.to_json()), "config": {}}
    lex = lexicon_metadata(ExportConfig(arpa=str(path), lm_order=3, **weights), meta, "m")
    assert lex is not None and lex["lm_order"] == 3
    stored = lexicon_from_metadata({"lexicon": lex}, tok)
    assert stored.lm_order == 3 and stored.decode(lp) == "mad red"
    back, direct = stored.lm, arpa_lm(path, 3, tok)
    for history in [("mad",), ("mad", "red"), ("red", "mad")]:
        for w in direct.log_probs:
            assert math.isclose(back.next_score(history, w), direct.next_score(history, w),
                                rel_tol=1e-5)  # fmt: skip


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
    triples = lm.higher[1]
    for r in np.random.default_rng(1).permutation(len(triples.ids))[:3000].tolist():
        u, v, w = (lm.words[i] for i in triples.ids[r])
        got = oracle.prob([w, v, u]) * UNIT
        assert abs(got - triples.logprob[r]) <= 1.01 * UNIT, (u, v, w)


def test_sphinx_pairs_as_a_bigram_source(tmp_path: Path, monkeypatch) -> None:
    """bigrams "sphinx": a listed pair keeps the file's P(w | v), the rest of v's mass goes to
    the unigram, so every context sums to 1; "train+sphinx" puts the transcripts' pairs over
    it; the sources' order is fixed."""
    from asrkd.config import ConfigError, parse_bigrams
    from asrkd.lexicon import WordLM, config_lm, sources, sphinx_bigram

    path = tmp_path / "lm.bin"
    write_sphinx_lm(path, UNIGRAMS, BIGRAMS)
    monkeypatch.setattr(sources, "_sphinx_pairs", lambda: sources.sphinx_pairs(path))
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


def test_pocketsphinx_english_pairs_and_triples() -> None:
    pytest.importorskip("pocketsphinx")
    from asrkd.lexicon.sources import _sphinx_pairs, _sphinx_triples

    names, ids, probs = _sphinx_triples()
    assert len(ids) > 1_600_000 and ((probs > 0) & (probs <= 1)).all()
    assert names[ids[0, 0]] and all(names[i] for i in ids[:1000].ravel())

    pairs = {(v, w): p for v, w, p in _sphinx_pairs()}
    assert len(pairs) > 1_900_000
    assert math.isclose(pairs["of", "the"], 10**-0.6986, rel_tol=1e-3)
    assert (SENTENCE_START, "the") in pairs and not any(w.startswith("<") for _, w in pairs)
