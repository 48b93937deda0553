"""Lexicon beam search: exact against brute force over all CTC paths, agrees with greedy
decoding on confident in-vocabulary input, repairs misspellings, works with BPE pieces, never
drops an utterance's last word, prunes with LM look-ahead; wordfreq vocabularies."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from asrkd.config import ConfigError, EvalConfig, ExportConfig
from asrkd.data.dataset import cut_text, load_cuts, split_by_speaker
from asrkd.data.text import BLANK, Tokenizer, train_bpe
from asrkd.data.validate import DataError
from asrkd.evaluation import evaluate
from asrkd.export import lexicon_metadata
from asrkd.lexicon import (
    BOOKS_MASS,
    SENTENCE_START,
    ArpaSource,
    LexiconDecoder,
    WordLM,
    arpa_lm,
    books_bigram,
    clear_caches,
    eval_decoder,
    stored_lm,
    training_lm,
    vocabulary_lm,
    wordfreq_lm,
)
from asrkd.ondevice import lexicon_from_metadata

TINY = Tokenizer(symbols=(BLANK, " ", "a", "b"))


def peaked(tok: Tokenizer, text: str, p: float = 0.9) -> np.ndarray:
    """(T', V) log-probs whose best path spells `text`: each token for two frames, a blank
    frame after each token, probability p on the intended symbol, the rest spread evenly."""
    frames = []
    for i in tok.encode(text):
        frames += [i, i, tok.blank_id]
    lp = np.full((len(frames), tok.vocab_size), math.log((1 - p) / (tok.vocab_size - 1)))
    lp[np.arange(len(frames)), frames] = math.log(p)
    return lp


def brute_force(log_probs: np.ndarray, dec: LexiconDecoder) -> str:
    """Every CTC path, collapsed; probabilities summed per label sequence; the best label
    sequence that spells lexicon words, scored with the same LM and word bonus."""
    totals: dict[tuple[int, ...], float] = {}
    n_frames, vocab = log_probs.shape
    for path in itertools.product(range(vocab), repeat=n_frames):
        labels = tuple(t for j, t in enumerate(path) if t != 0 and (j == 0 or path[j - 1] != t))
        score = float(sum(log_probs[j, t] for j, t in enumerate(path)))
        totals[labels] = np.logaddexp(totals.get(labels, -np.inf), score)
    best, best_score = "", -np.inf
    for labels, score in totals.items():
        text = "".join(TINY.symbols[t] for t in labels)
        if text.startswith(" ") or "  " in text:
            continue
        words = text.split()
        if words and not text.endswith(" ") and words[-1] not in dec.lm.log_probs:
            words[-1] = complete(words[-1], dec)  # the utterance ends inside a word
        if not all(w in dec.lm.log_probs for w in words):
            continue
        prevs = [SENTENCE_START, *words[:-1]]
        total = score + sum(
            dec.lm_weight * dec.lm.score(v, w) + dec.word_bonus for v, w in zip(prevs, words)
        )
        if total > best_score:
            best, best_score = " ".join(words), total
    return best


def complete(prefix: str, dec: LexiconDecoder) -> str:
    """The best-scoring lexicon word that starts with prefix (the alphabetically first among
    equals), or prefix itself when none does."""
    words = sorted(w for w in dec.lm.log_probs if w.startswith(prefix))
    return max(words, key=lambda w: dec.lm.log_probs[w], default=prefix)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "texts",
    [["a ab b ab ba", "ab ab a"], ["a abb bab ab", "bba a ab"]],  # 2nd: prefixes b, bb, ba, abb
)
@pytest.mark.parametrize("order", [1, 2])
def test_full_beam_equals_brute_force(seed: int, texts: list[str], order: int) -> None:
    rng = np.random.default_rng(seed)
    lm = WordLM.from_texts(texts, order)
    logits = rng.normal(size=(6, TINY.vocab_size)) * 2
    log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    dec = LexiconDecoder(
        TINY, lm, beam=10_000, lm_weight=0.7, word_bonus=0.3, prune=-np.inf, engine="python"
    )
    assert dec.decode(log_probs) == brute_force(log_probs, dec)


def test_confident_in_vocabulary_input_decodes_as_greedy_and_misspellings_are_repaired() -> None:
    tok = Tokenizer()
    lm = WordLM.from_texts(["the cat sat on the mat", "a dog ate the food", "all well"])
    dec = LexiconDecoder(tok, lm, beam=8)
    for text in ("the cat sat on the mat", "all well", "a dog ate the food", "dog"):
        assert dec.decode(peaked(tok, text)) == text
    # "cet" is no word: with the e only slightly ahead of an a, the lexicon picks "cat".
    lp = peaked(tok, "the cet")
    e, a = tok.encode("e")[0], tok.encode("a")[0]
    for j in range(len(lp)):
        if lp[j].argmax() == e and j > 6:
            lp[j, a] = lp[j, e] - 0.5
    assert dec.decode(lp) == "the cat"
    assert dec.decode(np.zeros((0, tok.vocab_size))) == ""


def test_bpe_pieces_and_word_priors() -> None:
    texts = ["the cat sat on the mat", "the dog ate the food", "the cat and the dog"] * 4
    tok = train_bpe(texts, 60)
    lm = WordLM.from_texts(texts)
    dec = LexiconDecoder(tok, lm, beam=8)
    for text in ("the cat sat on the mat", "the dog", "food"):
        assert dec.decode(peaked(tok, text)) == text
    assert lm.log_probs["the"] > lm.log_probs["food"]
    assert math.isclose(sum(math.exp(v) for v in lm.log_probs.values()), 1.0)
    with pytest.raises(ValueError, match="no words"):
        WordLM.from_texts(["", "?!"])


def test_evaluate_with_the_lexicon_decoder(
    tiny_teacher: Path, prepared_parts: dict[str, Path], tmp_path: Path
) -> None:
    cfg = EvalConfig(decoder="lexicon", lexicon_cuts=str(prepared_parts["train"]))
    assert cfg.tag == "lexicon-b8-lm0.5-wb1"
    summary = evaluate(tiny_teacher, [prepared_parts["test"]], tmp_path, cfg, measure=False)
    test = summary["sets"]["test"]
    assert summary["decoding"] == cfg.tag
    assert 0.0 <= test["oov_rate"] < 1.0 and "greedy_wer" in test
    for tag in ("greedy", cfg.tag):
        assert (tmp_path / f"hyps-test-{tag}.txt").is_file()
        assert (tmp_path / f"wer-test-{tag}.json").is_file()
    lexicon = set(
        WordLM.from_texts(cut_text(c) for c in load_cuts(prepared_parts["train"])).log_probs
    )
    hyp_words = {
        w
        for line in (tmp_path / f"hyps-test-{cfg.tag}.txt").read_text().splitlines()
        for w in (line.split("\t") + [""])[2].split()
    }
    assert hyp_words and hyp_words <= lexicon  # only lexicon words are ever recognised
    assert test["wer"] <= test["greedy_wer"] + 0.02
    # Without lexicon_cuts the model's own training manifest (named in its checkpoint) is used.
    again = evaluate(
        tiny_teacher,
        [prepared_parts["test"]],
        tmp_path / "b",
        EvalConfig(decoder="lexicon"),
        measure=False,
    )
    assert again["sets"] == summary["sets"]
    with pytest.raises(ConfigError, match="eval.decoder"):
        EvalConfig(decoder="wfst")


def test_decoding_pauses_the_cyclic_collector_and_restores_it() -> None:
    tok = Tokenizer()
    lexicon = LexiconDecoder(
        tok, WordLM.from_texts(["a cab", "a bad cab"]), beam=4, engine="python"
    )
    lp = peaked(tok, "a bad cab")
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            assert lexicon.decode(lp) == "a bad cab"
            assert gc.isenabled() == enabled
    finally:
        gc.enable()


def test_the_last_word_is_completed_when_every_beam_ends_inside_a_word() -> None:
    tok = Tokenizer()
    lm = WordLM.from_texts(["the cat sat on the car", "a car a car the dog"])
    dec = LexiconDecoder(tok, lm, beam=8)
    # The audio stops after "ca": with every other symbol below the pruning threshold no beam
    # has finished the word (the old decoder said "the"); "car" is likelier than "cat".
    for spelt, text in (("the ca", "the car"), ("the do", "the dog"), ("d", "dog")):
        assert dec.decode(peaked(tok, spelt, p=0.999)) == text
    assert dec.decode(peaked(tok, "the cat", p=0.999)) == "the cat"  # a spelt word stays


def test_look_ahead_keeps_the_likely_word_through_pruning() -> None:
    """Beam 1: frame 0 favours b (0.55 vs 0.45), frame 1 a, so acoustically "ba" leads "ab"
    (0.30 vs 0.20), but "ab" is 20 times as frequent. Without look-ahead both partial words
    score 0 in the LM at frame 0, so the beam keeps "b" and ends on "ba"; with it, the partial
    "a" carries log P(ab) and survives: the result is the exact best, "ab"."""
    p = np.array([[1e-6, 1e-6, 0.45, 0.55], [1e-6, 1e-6, 0.55, 0.45]])
    log_probs = np.log(p / p.sum(1, keepdims=True))
    lm = WordLM.from_texts(["ab"] * 20 + ["ba"])
    dec = LexiconDecoder(
        TINY, lm, beam=1, lm_weight=1.0, word_bonus=0.0, prune=-np.inf, engine="python"
    )
    assert dec.decode(log_probs) == brute_force(log_probs, dec) == "ab"
    dec.look = [0.0] * len(dec.look)  # the same decoder without look-ahead
    assert dec.decode(log_probs) == "ba"


def test_wordfreq_vocabulary_and_its_mix_with_the_transcripts() -> None:
    tok = Tokenizer()
    general = wordfreq_lm(20_000, tok)
    assert 15_000 < len(general.log_probs) <= 20_000
    for word in ("the", "and", "because", "house", "don't"):
        assert word in general.log_probs
    assert all(set(w) <= set(tok.symbols) - {" "} for w in general.log_probs)
    assert general.log_probs["the"] > general.log_probs["house"]
    assert math.isclose(sum(math.exp(v) for v in general.log_probs.values()), 1.0)
    train = WordLM.from_texts(["the zyzzyva sat"])
    mixed = vocabulary_lm("train+wordfreq:20000", 0.25, tok, lambda: train)
    assert set(mixed.log_probs) == set(general.log_probs) | {"zyzzyva"}
    assert math.isclose(math.exp(mixed.log_probs["zyzzyva"]), 0.75 / 3)
    assert math.isclose(sum(math.exp(v) for v in mixed.log_probs.values()), 1.0)
    assert vocabulary_lm("wordfreq:20000", 0.5, tok, lambda: 1 / 0).log_probs == general.log_probs
    assert vocabulary_lm("train", 0.5, tok, lambda: train) is train
    cfg = EvalConfig(decoder="lexicon", vocabulary="train+wordfreq:50000")
    assert cfg.tag == "lexicon-b8-lm0.5-wb1-train+wordfreq50000w0.5"
    for bad in ("wordfreq", "wordfreq:0", "train+train", "books:10"):
        with pytest.raises(ConfigError, match="vocabulary"):
            EvalConfig(vocabulary=bad)
    with pytest.raises(ConfigError, match="wordfreq_weight"):
        EvalConfig(wordfreq_weight=1.0)
    # what built it is cached for the next decoder, and forgotten on request (memory probes)
    import wordfreq

    assert wordfreq.get_frequency_dict.cache_info().currsize > 0
    clear_caches()
    assert wordfreq.get_frequency_dict.cache_info().currsize == 0
    assert wordfreq_lm(20_000, tok) == general


def _transcript_words(part: Path) -> list[str]:
    from asrkd.data.text import normalize_text

    return [
        w
        for trans in sorted(part.rglob("*.trans.txt"))
        for line in trans.read_text().splitlines()
        for w in normalize_text(line.split(maxsplit=1)[1]).split()
    ]


@pytest.mark.librispeech
def test_real_test_other_oov_rate_with_and_without_wordfreq() -> None:
    root = os.environ.get("ASRKD_LIBRISPEECH_DIR")
    if not root:
        pytest.skip("set ASRKD_LIBRISPEECH_DIR to a LibriSpeech folder with test-other")
    test_words = _transcript_words(Path(root) / "test-other")
    train = WordLM.from_texts([" ".join(_transcript_words(Path(root) / "train-clean-5"))])
    rates = {}
    for spec in ("train", "wordfreq:50000", "train+wordfreq:50000"):
        lm = vocabulary_lm(spec, 0.5, Tokenizer(), lambda: train)
        rates[spec] = sum(w not in lm.log_probs for w in test_words) / len(test_words)
    print(f"test-other OOV rate over {len(test_words)} words:", rates)
    assert rates["train"] > 0.1
    assert rates["train+wordfreq:50000"] < 0.05


def test_export_stores_a_wordfreq_lexicon_without_transcripts() -> None:
    meta = {"tokenizer": json.loads(Tokenizer().to_json())}
    lex = lexicon_metadata(ExportConfig(vocabulary="wordfreq:2000"), meta, "model.safetensors")
    assert lex["vocabulary"] == "wordfreq:2000" and lex["lm_order"] == 1
    assert "the" in ArpaSource(lex["arpa_gz"], 1).read_lm(Tokenizer()).log_probs
    assert lexicon_metadata(ExportConfig(), meta, "model.safetensors") is None
    with pytest.raises(ConfigError, match="lexicon_cuts"):
        ExportConfig(vocabulary="train+wordfreq:2000")


def test_bigram_lm_is_witten_bell_and_normalised() -> None:
    lm = WordLM.from_texts(["the cat sat", "the cat ran", "a dog sat"], order=2)
    assert lm.order == 2 and WordLM.from_texts(["the cat"]).order == 1
    uni = {w: math.exp(v) for w, v in lm.log_probs.items()}
    # "the": 2 tokens, 1 type after it -> lambda 2/3; "cat" follows it every time.
    assert math.isclose(math.exp(lm.score("the", "cat")), 2 / 3 + 1 / 3 * uni["cat"])
    assert math.isclose(math.exp(lm.score("the", "dog")), 1 / 3 * uni["dog"])
    # The sentence start is a context ("the" twice, "a" once: 3 tokens, 2 types).
    assert math.isclose(math.exp(lm.score(SENTENCE_START, "a")), 0.6 * 1 / 3 + 0.4 * uni["a"])
    assert lm.score("unseen", "dog") == lm.log_probs["dog"]
    mixed = lm.mix(WordLM.from_texts(["zebra zebra the"]), 0.5)
    for model in (lm, mixed):
        for prev in (SENTENCE_START, "the", "cat", "sat", "nowhere"):
            total = sum(math.exp(model.score(prev, w)) for w in model.log_probs)
            assert math.isclose(total, 1.0), (prev, total)
    back = WordLM.from_json(json.loads(json.dumps(mixed.to_json())))
    assert back == mixed


def test_bigram_context_changes_the_decoded_word() -> None:
    """The second word's vowel is heard as e and a alike: the unigram picks the frequent "red",
    the bigram picks "rad", the only word ever seen after "mad"."""
    tok = Tokenizer()
    texts = ["mad rad"] + ["red"] * 6
    lp = peaked(tok, "mad red", p=0.9)
    e, a = tok.encode("e")[0], tok.encode("a")[0]
    second = [j for j in range(len(lp)) if lp[j].argmax() == e]
    lp[second, a] = lp[second, e]
    kwargs = {"beam": 8, "lm_weight": 1.0, "word_bonus": 0.0}
    assert LexiconDecoder(tok, WordLM.from_texts(texts), **kwargs).decode(lp) == "mad red"
    assert LexiconDecoder(tok, WordLM.from_texts(texts, 2), **kwargs).decode(lp) == "mad rad"


def test_lm_order_config_training_lm_of_a_partial_run_and_stored_lexicons(
    prepared_parts: dict[str, Path],
) -> None:
    assert EvalConfig(decoder="lexicon", lm_order=2).tag == "lexicon-b8-lm0.5-wb1-bigram"
    cfg = EvalConfig(decoder="lexicon", vocabulary="train+wordfreq:1000", lm_order=2)
    assert cfg.tag == "lexicon-b8-lm0.5-wb1-train+wordfreq1000w0.5-bigram"
    with pytest.raises(ConfigError, match="lm_order"):
        EvalConfig(lm_order=3)
    with pytest.raises(ConfigError, match="word pairs"):
        EvalConfig(vocabulary="wordfreq:1000", lm_order=2)
    with pytest.raises(ConfigError, match="word pairs"):
        ExportConfig(vocabulary="wordfreq:1000", lm_order=2)
    # A run with transcripts for half its speakers decodes with their words alone.
    train = str(prepared_parts["train"])
    full = training_lm({"data": {"train_cuts": train}}, "m.safetensors", 2)
    half_cfg = {"data": {"train_cuts": train, "labelled_fraction": 0.5}, "train": {"seed": 0}}
    half = training_lm(half_cfg, "m.safetensors", 2)
    labelled = split_by_speaker(load_cuts(train), 0.5, 0)[0]
    assert set(half.log_probs) == set(WordLM.from_texts(cut_text(c) for c in labelled).log_probs)
    assert set(half.log_probs) < set(full.log_probs) and half.order == 2
    # A lexicon stored in an exported file: used as stored when cfg asks for what it holds,
    # a stored "train" unigram is mixed with cfg's wordfreq words, anything else is refused.
    meta = {"tokenizer": json.loads(Tokenizer().to_json()), "config": half_cfg}
    export = ExportConfig(lexicon_cuts="train", vocabulary="train+wordfreq:1000", lm_order=2)
    lex = lexicon_from_metadata({"lexicon": lexicon_metadata(export, meta, "m")}, Tokenizer())
    assert lex.vocabulary == "train+wordfreq:1000" and lex.lm.order == 2
    assert set(half.log_probs) < set(lex.lm.log_probs)
    assert stored_lm(cfg, lex, "m.onnx") is lex.lm
    with pytest.raises(ConfigError, match="carries a lexicon"):
        stored_lm(EvalConfig(decoder="lexicon", lm_order=2), lex, "m.onnx")
    old = lexicon_from_metadata(
        {"lexicon": lexicon_metadata(ExportConfig(lexicon_cuts="train"), meta, "m")}, Tokenizer()
    )
    unigram = EvalConfig(decoder="lexicon", vocabulary="train+wordfreq:1000")
    assert set(stored_lm(unigram, old, "m.onnx").log_probs) == set(lex.lm.log_probs)


def test_books_bigram_from_symspellpy_and_the_transcripts_over_it() -> None:
    """bigrams=books: Google Books' word pairs (symspellpy's list) over the unigram; train+books:
    the transcripts' Witten-Bell bigram over the books' one. Both normalised in every context;
    the books know pairs the transcripts never saw."""
    tok = Tokenizer()
    train = WordLM.from_texts(["the united states of america", "the old man"], order=2)
    vocab = vocabulary_lm("train+wordfreq:3000", 0.5, tok, lambda: train)
    books = books_bigram(vocab)
    assert books.order == 2 and books.log_probs == vocab.log_probs
    assert len(books.contexts) > 1000 and "states" in books.contexts["united"][1]
    # each context: BOOKS_MASS spread over the listed pairs, the rest on the unigram
    backoff, seen = books.contexts["united"]
    assert math.isclose(sum(seen.values()), BOOKS_MASS, rel_tol=1e-5) and math.isclose(
        math.exp(backoff), 1 - BOOKS_MASS
    )
    stacked = vocabulary_lm("train+wordfreq:3000", 0.5, tok, lambda: train, ("books",))
    assert stacked == train.mix(wordfreq_lm(3000, tok), 0.5).over(books)
    for model in (books, stacked):
        for prev in (SENTENCE_START, "the", "united", "of", "old", "nowhere"):
            total = sum(math.exp(model.score(prev, w)) for w in model.log_probs)
            assert math.isclose(total, 1.0, rel_tol=1e-5), (prev, total)
    # a pair only the books know is far likelier than its unigram; the transcripts' own pair
    # ("the old") keeps its Witten-Bell share on top of the books'
    assert books.score("prime", "minister") > vocab.log_probs["minister"] + 4
    assert stacked.score("prime", "minister") == books.score("prime", "minister")
    assert stacked.score("the", "old") > books.score("the", "old")
    assert WordLM.from_json(json.loads(json.dumps(stacked.to_json()))) == stacked
    # the config's checks and names
    cfg = EvalConfig(decoder="lexicon", vocabulary="wordfreq:3000", lm_order=2, bigrams="books")
    assert cfg.tag == "lexicon-b8-lm0.5-wb1-wordfreq3000-bigram-books"
    with pytest.raises(ConfigError, match="lm_order=2"):
        EvalConfig(bigrams="books")
    with pytest.raises(ConfigError, match="expected"):
        EvalConfig(lm_order=2, bigrams="train+web")
    with pytest.raises(ConfigError, match="word pairs"):
        ExportConfig(vocabulary="wordfreq:3000", lm_order=2, bigrams="train+books")
    # a file stores its bigrams' source, and is refused for another
    meta = {"tokenizer": json.loads(Tokenizer().to_json()), "config": {}}
    export = ExportConfig(vocabulary="wordfreq:3000", lm_order=2, bigrams="books")
    lex = lexicon_from_metadata({"lexicon": lexicon_metadata(export, meta, "m")}, Tokenizer())
    assert lex.bigrams == "books"
    assert_same_lm(stored_lm(cfg, lex, "m.onnx"), books_bigram(wordfreq_lm(3000, tok)))
    with pytest.raises(ConfigError, match="bigrams"):
        stored_lm(dataclasses.replace(cfg, bigrams="train"), lex, "m.onnx")


def assert_same_lm(got: WordLM, expected: WordLM) -> None:
    """The same LM to the 7 significant digits of an ARPA file (how a file carries it)."""
    assert got.log_probs.keys() == expected.log_probs.keys()
    assert got.contexts.keys() == expected.contexts.keys()
    for w, lp in expected.log_probs.items():
        assert math.isclose(got.log_probs[w], lp, rel_tol=1e-6, abs_tol=1e-6), w
    for v, (backoff, seen) in expected.contexts.items():
        assert math.isclose(got.contexts[v][0], backoff, rel_tol=1e-6, abs_tol=1e-6), v
        for w in [*seen, *list(expected.log_probs)[:20]]:  # listed pairs, and unlisted ones
            assert math.isclose(
                math.exp(got.score(v, w)), math.exp(expected.score(v, w)), rel_tol=1e-5
            ), (v, w)


def test_token_prune_drops_unlikely_tokens_everywhere_it_is_configured() -> None:
    """Frame 0 hears a only at log-prob -6, frame 1 hears b: the LM's "ab" (10,000 times as
    frequent as "b") wins while a is tried (prune -10) and cannot be spelt once it is not (-5).
    eval and export carry the threshold; an exported file stores it, older files read -10."""
    p = np.array([[np.exp(-6.0), 1e-6, np.exp(-6.0), 1.0], [1e-6, 1e-6, 1e-6, 1.0]])
    p[0, 0] = 1.0  # blank takes most of frame 0
    log_probs = np.log(p / p.sum(1, keepdims=True))
    lm = WordLM.from_texts(["ab"] * 10_000 + ["b"])
    kwargs = {"beam": 8, "lm_weight": 1.0, "word_bonus": 0.0}
    assert LexiconDecoder(TINY, lm, **kwargs).decode(log_probs) == "ab"
    assert LexiconDecoder(TINY, lm, prune=-5.0, **kwargs).decode(log_probs) == "b"

    cfg = EvalConfig(decoder="lexicon", vocabulary="wordfreq:1000", token_prune=-5.0)
    assert cfg.tag == "lexicon-b8-lm0.5-wb1-wordfreq1000-tp5"
    assert EvalConfig(decoder="lexicon").tag == "lexicon-b8-lm0.5-wb1"  # -10: names unchanged
    dec = eval_decoder(cfg, Tokenizer(), None, "m", lambda order: lm)
    assert dec is not None and dec.prune == -5.0
    for bad in (0.0, 1.0):
        with pytest.raises(ConfigError, match="token_prune"):
            EvalConfig(token_prune=bad)
        with pytest.raises(ConfigError, match="token_prune"):
            ExportConfig(token_prune=bad)
    meta = {"tokenizer": json.loads(Tokenizer().to_json()), "config": {}}
    export_cfg = ExportConfig(vocabulary="wordfreq:1000", token_prune=-5.0)
    lex = lexicon_metadata(export_cfg, meta, "m")
    assert lex is not None and lex["token_prune"] == -5.0
    assert lexicon_from_metadata({"lexicon": lex}, Tokenizer()).prune == -5.0
    del lex["token_prune"]
    assert lexicon_from_metadata({"lexicon": lex}, Tokenizer()).prune == -10.0


ARPA = """
\\data\\
ngram 1=7
ngram 2=5
ngram 3=1

\\1-grams:
-1.0\t</s>
-99\t<s>\t-0.3
-2.0\t<unk>
-0.5\tMAD\t-0.2
-0.6\tRED\t-0.1
-1.5\tRAD
-1.5\tRed

\\2-grams:
-0.4\t<s> MAD\t0.0
-0.2\tMAD RAD
-3.0\tMAD RED
-0.3\tRED </s>
-0.01\tRed MAD

\\3-grams:
-0.1\t<s> MAD RAD

\\end\\
"""


def test_an_arpa_file_is_the_lexicon_and_lm(tmp_path: Path, prepared_parts) -> None:
    """Words normalised (RED and Red summed; </s>, <unk> left out), the unigram from the
    1-grams, the bigram in back-off form: a listed pair has the file's P(w | v), an unlisted one
    b(v) P(w); the decoder and an exported file take it; bad files are named."""
    import gzip

    path = tmp_path / "lm.arpa"
    path.write_text(ARPA)
    tok = Tokenizer()
    uni = arpa_lm(path, 1, tok)
    assert set(uni.log_probs) == {"mad", "red", "rad"} and uni.order == 1
    assert math.isclose(uni.log_probs["red"], math.log(10**-0.6 + 10**-1.5))
    assert math.isclose(uni.log_probs["mad"], math.log(10**-0.5))
    bi = arpa_lm(path, 2, tok)
    assert math.isclose(bi.score("mad", "rad"), math.log(10**-0.2), rel_tol=1e-5)
    assert math.isclose(bi.score(SENTENCE_START, "mad"), math.log(10**-0.4), rel_tol=1e-5)
    # MAD RED (10^-3) lies below b(mad) P(red): read as unlisted, like an unseen pair
    assert math.isclose(bi.score("mad", "red"), -0.2 * math.log(10) + uni.log_probs["red"])
    # "Red MAD" belongs to the second spelling of red: RED's back-off and pairs stand alone
    assert math.isclose(bi.score("red", "mad"), -0.1 * math.log(10) + uni.log_probs["mad"])
    gz = tmp_path / "lm.arpa.gz"
    gz.write_bytes(gzip.compress(ARPA.encode()))
    assert arpa_lm(gz, 2, tok) == bi
    assert arpa_lm(path, 2, tok) is bi  # read once while the file stays the same
    path.write_text(ARPA.replace("-1.5\tRAD", "-1.25\tRAD"))  # size changes with mtime
    assert math.isclose(arpa_lm(path, 2, tok).log_probs["rad"], math.log(10**-1.25))
    path.write_text(ARPA)

    # "mad" then e/a heard alike: the unigram says red, the file's bigram rad
    lp = peaked(tok, "mad red", p=0.9)
    e, a = tok.encode("e")[0], tok.encode("a")[0]
    second = [j for j in range(len(lp)) if lp[j].argmax() == e]
    lp[second, a] = lp[second, e]
    weights = {"beam": 8, "lm_weight": 1.0, "word_bonus": 0.0}
    for order, text in ((1, "mad red"), (2, "mad rad")):
        cfg = EvalConfig(decoder="lexicon", arpa=str(gz), lm_order=order, **weights)
        dec = eval_decoder(cfg, tok, None, "m", lambda order: pytest.fail("no transcripts"))
        assert dec is not None and dec.vocabulary == "arpa:lm.arpa.gz"
        assert dec.decode(lp) == text
    assert cfg.tag == "lexicon-b8-lm1-wb0-arpa-lm-bigram"

    # stored in an exported file, read back as the same LM and taken as stored by evaluate
    meta = {"tokenizer": json.loads(tok.to_json()), "config": {}}
    lex = lexicon_metadata(ExportConfig(arpa=str(gz), lm_order=2, **weights), meta, "m")
    assert lex is not None and lex["vocabulary"] == "arpa:lm.arpa.gz"
    stored = lexicon_from_metadata({"lexicon": lex}, tok)
    assert_same_lm(stored.lm, bi)  # to the 7 digits of the ARPA text the file carries
    assert stored_lm(cfg, stored, "m.onnx") is stored.lm
    gz.unlink()  # evaluate takes the stored LM: the ARPA file need not be there any more
    assert eval_decoder(cfg, tok, stored, "m.onnx", lambda order: pytest.fail()).lm is stored.lm
    # the file's decoder itself where cfg searches as it does (no second trie of its words)
    same = dataclasses.replace(cfg, token_prune=stored.prune)
    assert eval_decoder(same, tok, stored, "m.onnx", None) is stored
    wider = eval_decoder(dataclasses.replace(same, beam=16), tok, stored, "m.onnx", None)
    assert wider is not stored and wider.beam == 16 and wider.lm is stored.lm
    with pytest.raises(ConfigError, match="arpa:lm.arpa.gz.*eval.arpa=PATH"):
        eval_decoder(EvalConfig(decoder="lexicon", lm_order=2), tok, stored, "m.onnx", None)
    other = EvalConfig(decoder="lexicon", arpa=str(path), lm_order=2, **weights)  # another file
    assert eval_decoder(other, tok, stored, "m.onnx", None).vocabulary == "arpa:lm.arpa"

    with pytest.raises(ConfigError, match="leave eval.vocabulary"):
        EvalConfig(arpa=str(path), vocabulary="wordfreq:1000")
    with pytest.raises(ConfigError, match=r"bigrams \(.books.\) at .train."):
        ExportConfig(arpa=str(path), lm_order=2, bigrams="books")
    with pytest.raises(ConfigError, match="lexicon_cuts"):
        ExportConfig(arpa=str(path), lexicon_cuts="train")
    with pytest.raises(DataError, match="no such ARPA file"):
        arpa_lm(tmp_path / "missing.arpa", 1, tok)
    unigrams_only = tmp_path / "uni.arpa"
    unigrams_only.write_text(ARPA.split("\\2-grams:")[0])
    assert arpa_lm(unigrams_only, 1, tok).order == 1
    with pytest.raises(DataError, match="uni.arpa: lm_order=2 but the file has no 2-grams"):
        arpa_lm(unigrams_only, 2, tok)
    for name, data in (("bin.arpa", b"\xff\xfe\x00binary"), ("fake.arpa.gz", ARPA.encode())):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=f"{name}: not a readable ARPA text file"):
            arpa_lm(tmp_path / name, 1, tok)
    bad = tmp_path / "bad.arpa"
    bad.write_text(ARPA.replace("-0.6\tRED\t-0.1", "x RED"))
    with pytest.raises(DataError, match=r"bad.arpa:12: malformed ARPA line"):
        arpa_lm(bad, 1, tok)


@pytest.mark.parametrize("engine", ["python", "flashlight"])
def test_blank_penalty_turns_a_blank_heavy_letter_into_the_word(engine: str) -> None:
    """Frame 0 favours blank (0.55) over a (0.45), frame 1 is b: "b" wins the plain search
    (the LM knows "ab" and "b" equally), "ab" once blank's log-prob is lowered by 0.5
    (log 0.55 - 0.5 < log 0.45). The caller's log-probs are not changed; eval and export
    carry the penalty, an exported file stores it, older files read 0."""
    p = np.array([[0.55, 1e-6, 0.45, 1e-6], [1e-6, 1e-6, 1e-6, 1.0]])
    log_probs = np.log(p / p.sum(1, keepdims=True))
    before = log_probs.copy()
    lm = WordLM.from_texts(["ab", "b"])
    kwargs = {"beam": 8, "lm_weight": 1.0, "word_bonus": 0.0, "engine": engine}
    assert LexiconDecoder(TINY, lm, **kwargs).decode(log_probs) == "b"
    penalised = LexiconDecoder(TINY, lm, blank_penalty=0.5, **kwargs)
    assert penalised.decode(log_probs) == "ab"
    assert (log_probs == before).all()

    cfg = EvalConfig(decoder="lexicon", vocabulary="wordfreq:1000", blank_penalty=1.0)
    assert cfg.tag == "lexicon-b8-lm0.5-wb1-wordfreq1000-bp1"
    assert eval_decoder(cfg, Tokenizer(), None, "m", lambda order: lm).blank_penalty == 1.0
    for bad in (-0.5, math.inf, math.nan):
        with pytest.raises(ConfigError, match="blank_penalty"):
            EvalConfig(blank_penalty=bad)
        with pytest.raises(ConfigError, match="blank_penalty"):
            ExportConfig(blank_penalty=bad)
    meta = {"tokenizer": json.loads(Tokenizer().to_json()), "config": {}}
    lex = lexicon_metadata(ExportConfig(vocabulary="wordfreq:1000", blank_penalty=1.0), meta, "m")
    assert lex is not None and lex["blank_penalty"] == 1.0
    stored = lexicon_from_metadata({"lexicon": lex}, Tokenizer())
    assert stored.blank_penalty == 1.0
    # the file's own decoder is the one eval uses when its settings are asked for
    assert eval_decoder(cfg, Tokenizer(), stored, "m", lambda order: lm) is stored
    del lex["blank_penalty"]
    assert lexicon_from_metadata({"lexicon": lex}, Tokenizer()).blank_penalty == 0.0
