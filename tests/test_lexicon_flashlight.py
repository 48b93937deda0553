"""The flashlight-text engine of the lexicon search (the fast path) against asrkd's Python
search (the reference): the KenLM copy of the word LM scores as WordLM does, both engines read
the same text from the same log-probs (bigram and trigram LMs), the end of an utterance is finished alike, and the
engine is a config choice recorded in the decoding tag."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest

from asrkd.config import ConfigError, EvalConfig
from asrkd.data.text import Tokenizer, train_bpe
from asrkd.lexicon import SENTENCE_START, LexiconDecoder, WordLM, WordTriples, eval_decoder
from asrkd.lexicon_flashlight import LN10, FlashlightSearch

TEXTS = [
    "the cat sat on the mat",
    "a dog ran to the cat",
    "the mat is red",
    "cats and dogs",
    "then there was a theme",
    "the red dog sat",
]


def kenlm_score(search: FlashlightSearch, prev: str, word: str) -> float:
    """ln P(word | prev) as the engine's KenLM model scores it."""
    lm, index = search.lm, search.words.get_index
    state = lm.start(False)
    if prev != SENTENCE_START:
        state = lm.score(state, index(prev))[0]
    return lm.score(state, index(word))[1] * LN10


@pytest.mark.parametrize("order", [1, 2])
def test_the_kenlm_copy_scores_every_pair_as_the_word_lm(order: int) -> None:
    tok = Tokenizer()
    lm = WordLM.from_texts(TEXTS, order)
    if order == 2:  # contexts from two sources, some pairs listed in both (WordLM.over)
        lm = lm.over(WordLM.from_texts(["the dog ran on the red mat", "a red cat"], 2))
    dec = LexiconDecoder(tok, lm, engine="flashlight")
    assert dec.engine == "flashlight"
    for prev in (SENTENCE_START, *lm.log_probs):
        for word in lm.log_probs:
            expected = lm.score(prev, word)
            assert math.isclose(kenlm_score(dec._fast, prev, word), expected, abs_tol=2e-5)


def noisy(tok: Tokenizer, text: str, rng: np.random.Generator, noise: float) -> np.ndarray:
    """(T', V) log-probs of `text` spoken one to two frames a symbol, blanks between, with
    Gaussian noise on the logits: the kind of evidence a trained CTC model gives."""
    frames = []
    for i in tok.encode(text):
        frames += [i] * int(rng.integers(1, 3)) + [tok.blank_id] * int(rng.integers(0, 2))
    logits = rng.normal(0.0, noise, (len(frames), tok.vocab_size))
    logits[np.arange(len(frames)), frames] += 6.0
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def with_triples(lm: WordLM, texts: list[str], share: float = 0.6) -> WordLM:
    """`lm` with the word triples of `texts` (the sentence start as a context): each context's
    triples take `share` of its mass by their counts, the bigram the rest (WordTriples)."""
    words = tuple(lm.log_probs)
    ids = {w: i for i, w in enumerate((*words, SENTENCE_START))}
    counts: dict[tuple[int, int, int], int] = {}
    for text in texts:
        seq = [SENTENCE_START, *text.split()]
        for u, v, w in zip(seq, seq[1:], seq[2:]):
            key = (ids[u], ids[v], ids[w])
            counts[key] = counts.get(key, 0) + 1
    totals: dict[tuple[int, int], int] = {}
    for (u, v, _), c in counts.items():
        totals[u, v] = totals.get((u, v), 0) + c
    rows = np.array(list(counts), dtype=np.int64)
    shares = np.array([share * c / totals[u, v] for (u, v, _), c in counts.items()])
    contexts = {k: math.log(1 - share) for k in totals}
    return WordLM(lm.log_probs, lm.contexts, WordTriples.from_arrays(words, rows, shares, contexts))


@pytest.mark.parametrize("order", [2, 3])
def test_both_engines_read_the_same_text(order: int) -> None:
    tok = Tokenizer()
    lm = WordLM.from_texts(TEXTS, 2)
    if order == 3:
        lm = with_triples(lm, TEXTS)
        assert lm.order == 3 and math.isclose(
            sum(math.exp(lm.next_score(("the", "cat"), w)) for w in lm.log_probs), 1.0
        )
    rng, words = np.random.default_rng(0), sorted(lm.log_probs)
    py = LexiconDecoder(tok, lm, 16, 0.7, 1.5, prune=-5.0, engine="python")
    fl = LexiconDecoder(tok, lm, 16, 0.7, 1.5, prune=-5.0, engine="flashlight")
    same = errors_py = errors_fl = n_words = 0
    for k in range(150):
        truth = [random.Random(k).choice(words) for _ in range(1 + k % 6)]
        lp = noisy(tok, " ".join(truth), rng, noise=(0.5, 1.5, 2.5)[k % 3])
        a, b = py.decode(lp), fl.decode(lp)
        same += a == b
        n_words += len(truth)
        errors_py += sum(x != y for x, y in zip(a.split(), truth)) + abs(
            len(a.split()) - len(truth)
        )
        errors_fl += sum(x != y for x, y in zip(b.split(), truth)) + abs(
            len(b.split()) - len(truth)
        )
    # the engines differ where flashlight merges hypotheses that share the LM state (its
    # recombination) and where it lets spaces stand between words freely: rarely, and not in
    # accuracy
    assert same >= 0.9 * 150
    assert errors_fl <= errors_py + 0.02 * n_words


def test_the_last_word_is_finished_as_the_python_search_does() -> None:
    tok = Tokenizer()
    lm = WordLM.from_texts(["the cat sat on the car", "a car a car the dog"], 2)
    fl = LexiconDecoder(tok, lm, beam=8, engine="flashlight")
    rng = np.random.default_rng(1)
    for spelt, text in (("the ca", "the car"), ("the do", "the dog"), ("the cat", "the cat")):
        lp = noisy(tok, spelt, rng, noise=0.0)
        assert fl.decode(lp) == text
    assert fl.decode(np.zeros((0, tok.vocab_size))) == ""


def test_the_engine_is_a_config_choice_in_the_tag_and_bpe_searches_in_python() -> None:
    assert EvalConfig(decoder="lexicon").lexicon_engine == "python"  # what figures were made with
    assert EvalConfig(decoder="lexicon").tag == "lexicon-b8-lm0.5-wb1"
    assert EvalConfig(decoder="lexicon", lexicon_engine="flashlight").tag.endswith("-fl")
    with pytest.raises(ConfigError, match="eval.lexicon_engine"):
        EvalConfig(decoder="lexicon", lexicon_engine="kenlm")
    bpe = train_bpe(TEXTS * 3, 40)
    dec = LexiconDecoder(bpe, WordLM.from_texts(TEXTS), beam=8, engine="flashlight")
    assert dec.engine == "python" and dec.decode(np.zeros((0, bpe.vocab_size))) == ""
    # a file's stored decoder is reused only when cfg asks for the engine it was built with
    tok, lm = Tokenizer(), WordLM.from_texts(TEXTS)
    stored = LexiconDecoder(tok, lm, 8, 0.5, 1.0, prune=-10.0, engine="flashlight")
    for engine in ("flashlight", "python"):
        cfg = EvalConfig(decoder="lexicon", lexicon_engine=engine)
        dec = eval_decoder(cfg, tok, stored, "model.onnx", lambda order: lm)
        assert (dec is stored) == (engine == "flashlight") and dec.engine == engine


def test_a_decoder_that_decodes_releases_its_python_lm() -> None:
    tok = Tokenizer()
    lm = WordLM.from_texts(TEXTS, 2)
    rng = np.random.default_rng(2)
    lp = noisy(tok, "the red dog sat", rng, noise=0.0)
    fl = LexiconDecoder(tok, lm, 8, 0.5, 1.0, prune=-10.0, engine="flashlight")
    py = LexiconDecoder(tok, lm, 8, 0.5, 1.0, prune=-10.0, engine="python")
    assert fl.release_lm() is fl and fl.lm is None and py.release_lm().lm is lm
    assert fl.decode(lp) == py.decode(lp) == "the red dog sat"
    assert fl.knows("dog") and not fl.knows("do") and py.knows("dog") and not py.knows("do")
    same = EvalConfig(
        decoder="lexicon", beam=8, lm_order=2, token_prune=-10.0, lexicon_engine="flashlight"
    )
    assert eval_decoder(same, tok, fl, "model.onnx", lambda order: lm) is fl
    with pytest.raises(ValueError, match="released its LM"):
        eval_decoder(dataclasses.replace(same, beam=4), tok, fl, "model.onnx", lambda o: lm)
