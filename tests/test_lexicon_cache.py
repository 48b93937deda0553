"""eval.lm_cache: a built word LM kept as ARPA text and read back by later decoders."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from asrkd.config import EvalConfig, ExportConfig
from asrkd.data.text import Tokenizer, train_bpe
from asrkd.lexicon import ArpaFile, ArpaSource, LexiconDecoder, WordLM, eval_decoder
from asrkd.lexicon_cache import cached_arpa, lm_inputs

TEXTS = [
    "the cat sat on the mat",
    "a dog ran to the cat",
    "the mat is red",
    "cats and dogs",
    "the red dog sat",
]
OTHER = [*TEXTS, "a red cat ran"]


def noisy(tok: Tokenizer, text: str, rng: np.random.Generator, noise: float) -> np.ndarray:
    """(T, V) log-probs spelling `text` (a blank between letters) with Gaussian noise."""
    ids = []
    for i in tok.encode(text):
        ids += [i, tok.blank_id]
    logits = rng.normal(0.0, noise, (len(ids), tok.vocab_size))
    logits[np.arange(len(ids)), ids] += 6.0
    return logits - np.log(np.exp(logits).sum(1, keepdims=True))


def config(folder, **kw) -> EvalConfig:
    settings = {"decoder": "lexicon", "beam": 16, "lm_weight": 0.7, "lm_order": 2,
                "lexicon_engine": "flashlight", "lm_cache": str(folder)}  # fmt: skip
    return EvalConfig(**{**settings, **kw})


def counting(texts):
    """train_lm(order) of `texts`, and the list of the orders it was called with."""
    calls = []

    def train_lm(order: int) -> WordLM:
        calls.append(order)
        return WordLM.from_texts(texts, order)

    return train_lm, calls


def test_a_cached_lm_decodes_as_the_lm_built_in_memory(tmp_path, monkeypatch, caplog) -> None:
    tok, rng = Tokenizer(), np.random.default_rng(0)
    cfg = config(tmp_path / "cache")
    built = eval_decoder(dataclasses.replace(cfg, lm_cache=""), tok, None, "m", counting(TEXTS)[0])
    caplog.set_level("INFO", logger="asrkd.lexicon_cache")
    first = eval_decoder(cfg, tok, None, "m", counting(TEXTS)[0])
    # the log says what happened: built (and cached), not read "from the cache"
    assert "lexicon LM built in" in caplog.text and "from the cache" not in caplog.text
    entries = sorted(p.suffix for p in (tmp_path / "cache").iterdir())
    assert entries == [".arpa", ".json", ".lock"]
    # the second decoder of the same LM reads the file: nothing is built again
    monkeypatch.setattr("asrkd.lexicon.search.config_lm", lambda *a: pytest.fail("built again"))
    monkeypatch.setattr("asrkd.lexicon_cache.config_lm", lambda *a: pytest.fail("built again"))
    caplog.clear()
    second = eval_decoder(cfg, tok, None, "m", counting(TEXTS)[0])
    assert "lexicon LM from the cache" in caplog.text and "built in" not in caplog.text
    assert first._lm is None and second._lm is None  # no Python tables held
    words = sorted(WordLM.from_texts(TEXTS).log_probs)
    for k in range(60):
        text = " ".join(words[(k * 7 + i) % len(words)] for i in range(1 + k % 4))
        lp = noisy(tok, text, rng, noise=(0.5, 1.5, 2.5)[k % 3])
        assert first.decode(lp) == second.decode(lp) == built.decode(lp)
    record = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert record["order"] == 2 and record["inputs"]["bigrams"] == "train"


def test_the_key_changes_with_the_transcripts_the_settings_and_an_arpa_file(tmp_path) -> None:
    tok, folder = Tokenizer(), tmp_path / "cache"
    cfg = config(folder)
    a = cached_arpa(folder, cfg, tok, counting(TEXTS)[0])
    assert cached_arpa(folder, cfg, tok, counting(TEXTS)[0]) == a
    b = cached_arpa(folder, cfg, tok, counting(OTHER)[0])  # another speaker split, say
    c = cached_arpa(folder, dataclasses.replace(cfg, lm_order=1), tok, counting(TEXTS)[0])
    assert len({a.path, b.path, c.path}) == 3 and (a.order, b.order, c.order) == (2, 2, 1)
    # the beam and the weights are the search's, not the LM's: the same entry
    d = cached_arpa(
        folder, dataclasses.replace(cfg, beam=4, lm_weight=2.0), tok, counting(TEXTS)[0]
    )
    assert d == a
    # an ARPA file's LM: its path, size and modification time are in the key
    arpa = tmp_path / "lm.arpa"
    arpa.write_text(a.path.read_text())
    by_file = dataclasses.replace(cfg, vocabulary="train", bigrams="train", arpa=str(arpa))
    e = cached_arpa(folder, by_file, tok, lambda order: pytest.fail("transcripts not asked"))
    os.utime(arpa, ns=(1, 1))
    f = cached_arpa(folder, by_file, tok, lambda order: pytest.fail("transcripts not asked"))
    assert e.path != f.path and e.path != a.path


def test_the_transcripts_are_read_only_where_the_vocabulary_uses_them(tmp_path) -> None:
    tok = Tokenizer()
    train_lm, calls = counting(TEXTS)
    lm_inputs(config(tmp_path), tok, train_lm)
    assert calls == [2]  # the transcripts' bigram: lm_order 2 with bigrams "train"
    lm_inputs(config(tmp_path, bigrams="train", lm_order=1), tok, train_lm)
    assert calls == [2, 1]


def test_only_the_cpp_search_of_letters_reads_the_cache(tmp_path) -> None:
    tok = Tokenizer()
    python = dataclasses.replace(config(tmp_path / "a"), lexicon_engine="python")
    assert eval_decoder(python, tok, None, "m", counting(TEXTS)[0])._lm is not None
    bpe = train_bpe(TEXTS * 3, 40)
    dec = eval_decoder(config(tmp_path / "b"), bpe, None, "m", counting(TEXTS)[0])
    assert dec.engine == "python" and dec._lm is not None
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _build_in_child(folder: str, queue) -> None:
    arpa = cached_arpa(folder, config(folder), Tokenizer(), counting(TEXTS)[0])
    queue.put(str(arpa.path))


def test_processes_asking_at_once_share_one_build(tmp_path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    folder = str(tmp_path / "cache")
    children = [ctx.Process(target=_build_in_child, args=(folder, queue)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
    paths = {queue.get(timeout=5) for _ in children}
    assert len(paths) == 1 and all(c.exitcode == 0 for c in children)
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".arpa", ".json", ".lock"]


def test_an_exported_lexicon_through_the_cache_carries_the_same_text(tiny_teacher, tmp_path):
    pytest.importorskip("onnxscript", reason="export needs the export extra: asrkd[export]")
    from asrkd.export import lexicon_metadata
    from asrkd.lexicon_flashlight import arpa_words
    from asrkd.models.checkpoint import read_checkpoint

    meta = read_checkpoint(tiny_teacher)[1]
    cfg = ExportConfig(lexicon_cuts="train", lm_order=2, lexicon_engine="flashlight")
    cached = dataclasses.replace(cfg, lm_cache=str(tmp_path / "cache"))
    plain, through = (lexicon_metadata(c, meta, tiny_teacher) for c in (cfg, cached))
    (arpa,) = (tmp_path / "cache").glob("*.arpa")
    texts = []
    for lex in (plain, through):
        with ArpaSource(lex["arpa_gz"], lex["lm_order"]).file() as path:
            texts.append(path.read_text())
    assert texts[0] == texts[1] == arpa.read_text() and through["lm_order"] == 2
    assert {k: v for k, v in plain.items() if k != "arpa_gz"} == {
        k: v for k, v in through.items() if k != "arpa_gz"
    }
    # the evaluation of the same model and settings reads the same entry
    decoder = LexiconDecoder(Tokenizer(), None, 8, engine="flashlight", arpa=ArpaFile(arpa, 2))
    words = arpa_words(arpa)
    assert words and all(decoder.knows(w) for w in words)


def test_a_build_killed_mid_write_leaves_no_entry_and_is_cleaned_up(tmp_path, monkeypatch) -> None:
    tok, folder = Tokenizer(), tmp_path / "cache"
    cfg = config(folder)

    def dies_half_way(lm, path):
        Path(path).write_text("\\data\\\nngram 1=")  # the first bytes, then the writer dies
        raise KeyboardInterrupt

    monkeypatch.setattr("asrkd.lexicon_flashlight.write_arpa", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        cached_arpa(folder, cfg, tok, counting(TEXTS)[0])
    assert not list(folder.glob("*.arpa")) and not list(folder.glob("*.json"))
    # a writer killed by a signal leaves its temporary file behind: the next build removes it
    stale = folder / ".abc.arpa.999999999.0123456789ab.tmp"
    stale.write_text("half")
    os.utime(stale, (1, 1))
    monkeypatch.undo()
    arpa = cached_arpa(folder, cfg, tok, counting(TEXTS)[0])
    assert arpa.path.read_text().startswith("\\data\\") and not stale.exists()
    assert sorted(p.suffix for p in folder.iterdir()) == [".arpa", ".json", ".lock"]
