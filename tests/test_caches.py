"""`asrkd cache`: the teacher-output caches and LMs found under a folder, their sizes and last
use, and prune deleting the unused ones but never one in use or used lately."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from asrkd.caches import find_caches, prune, teacher_cache_name
from asrkd.cli import main
from asrkd.config import EvalConfig
from asrkd.data.text import Tokenizer
from asrkd.distill.cache import TeacherCache, build_cache
from asrkd.distill.teachers import CheckpointTeacher, TeacherRequest
from asrkd.lexicon import WordLM
from asrkd.lexicon_cache import cached_arpa

pytestmark = pytest.mark.usefixtures("one_thread")

DAY = 86400.0
TEXTS = ["the cat sat on the mat", "a dog ran to the cat"]  # the cached LM's transcripts


def age(path: Path, days: float) -> None:
    """Set `path`'s last use `days` ago (as if nothing had opened it since)."""
    when = time.time() - days * DAY
    os.utime(path, (when, when))


@pytest.fixture
def caches(tiny_teacher: Path, prepared_parts: dict[str, Path], tmp_path: Path) -> dict:
    """Under tmp_path/runs: two teacher caches of one manifest (transcripts asked; logits and
    hidden layer 1), an LM entry, and a killed build's folder."""
    runs = tmp_path / "runs"
    teacher = CheckpointTeacher(tiny_teacher)
    root = runs / "a" / "teacher_cache"
    texts = build_cache(teacher, prepared_parts["dev"], TeacherRequest(transcripts=True),
                        cache_root=root, progress=False)  # fmt: skip
    hidden = build_cache(teacher, prepared_parts["dev"], TeacherRequest(True, False, (1,)),
                         cache_root=root, progress=False)  # fmt: skip
    lm_cache = runs / "b" / "lm-cache"
    lm_cfg = EvalConfig(decoder="lexicon", lm_order=2, lexicon_engine="flashlight",
                        lm_cache=str(lm_cache))  # fmt: skip
    lm = cached_arpa(lm_cache, lm_cfg, Tokenizer(), lambda order: WordLM.from_texts(TEXTS, order))
    partial = hidden.directory.with_name(
        hidden.directory.name.replace("hidden1", "hidden0") + ".tmp"
    )
    partial.mkdir()
    (partial / "shard-00000.safetensors").write_bytes(b"x" * 1000)
    dirs = {"texts": texts.directory, "hidden": hidden.directory}
    del texts, hidden  # closed: their readers' locks released
    return {"runs": runs, "lm": Path(lm.path), "partial": partial, **dirs}


def test_the_list_names_each_entry_with_its_size_and_content(caches) -> None:
    entries = {e.path: e for e in find_caches([caches["runs"]])}
    assert set(entries) == {caches["texts"], caches["hidden"], caches["lm"], caches["partial"]}
    texts, hidden = entries[caches["texts"]], entries[caches["hidden"]]
    assert texts.kind == hidden.kind == "teacher"
    assert "10 utterances of cuts_dev" in texts.about and "transcripts" in texts.about
    assert "model.safetensors" in texts.about  # the teacher, by its file
    assert "logits; hidden states of layers 1" in hidden.about
    assert "transcripts" in hidden.about  # a checkpoint teacher stores them always
    assert hidden.size == sum(p.stat().st_size for p in caches["hidden"].iterdir())
    assert hidden.size > texts.size  # the same logits and transcripts, and the states
    lm = entries[caches["lm"]]
    assert lm.kind == "lm" and lm.about.startswith("order-2 word LM")
    assert lm.size == caches["lm"].stat().st_size + caches["lm"].with_suffix(".json").stat().st_size
    assert entries[caches["partial"]].kind == "partial"
    assert [e.path for e in find_caches([caches["hidden"]])] == [caches["hidden"]]  # named itself


def test_every_name_the_teacher_cache_writes_is_listed_as_what_it_holds(tmp_path) -> None:
    """The names asrkd.distill.cache gives (through teacher_cache_name) read back by the
    listing: stem, teacher, hidden layers and whether transcripts are stored."""
    fingerprint = "0123456789abcdef" * 4
    for layers, transcripts in (((), True), ((2,), False), ((2, 5), True)):
        folder = tmp_path / teacher_cache_name("cuts_train", fingerprint, 0, layers, transcripts)
        folder.mkdir()
        (folder / "index.json").write_text('{"entries": {"u1": 0, "u2": 0}}')
        (entry,) = find_caches([folder])
        assert entry.kind == "teacher" and entry.path == folder
        assert entry.about.startswith("teacher 0123456789ab; 2 utterances of cuts_train")
        hidden = "hidden states of layers " + ", ".join(str(x) for x in layers)
        assert (hidden in entry.about) if layers else ("hidden" not in entry.about)
        assert entry.about.endswith("transcripts") == transcripts


def test_prune_removes_the_unused_and_keeps_what_is_used_or_recent(caches) -> None:
    for key in ("texts", "hidden"):
        age(caches[key] / "index.json", 10)
    age(caches["lm"].with_suffix(".json"), 10)
    age(caches["partial"], 10)
    entries = find_caches([caches["runs"]])
    dry = prune(entries, 5 * DAY, dry_run=True)
    assert len(dry["removed"]) == 4 and all(e.path.exists() for e in entries)

    reader = TeacherCache(caches["texts"])  # a training reading it
    assert time.time() - (caches["texts"] / "index.json").stat().st_mtime < 60  # marked used
    age(caches["texts"] / "index.json", 10)
    with open(caches["lm"].with_suffix(".lock"), "w") as lock:  # a process building the LM
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = prune(find_caches([caches["runs"]]), 5 * DAY, dry_run=False)
    assert {e.path for e in result["in_use"]} == {caches["texts"], caches["lm"]}
    assert {e.path for e in result["removed"]} == {caches["hidden"], caches["partial"]}
    assert not caches["hidden"].exists() and not caches["partial"].exists()
    assert caches["texts"].is_dir() and caches["lm"].is_file()
    assert (
        len(reader.get([next(iter(reader.entries))], TeacherRequest(transcripts=True)).transcripts)
        == 1
    )

    del reader
    age(caches["texts"] / "index.json", 1)
    result = prune(find_caches([caches["runs"]]), 5 * DAY, dry_run=False)
    assert {e.path for e in result["recent"]} == {caches["texts"]}  # used a day ago
    assert {e.path for e in result["removed"]} == {caches["lm"]}
    assert not caches["lm"].exists() and not caches["lm"].with_suffix(".json").exists()
    assert caches["texts"].is_dir()


def test_the_cache_command(caches, capsys) -> None:
    assert main(["cache", "list", str(caches["runs"])]) == 0
    out = capsys.readouterr().out
    assert "in 4 cache entries" in out and str(caches["hidden"]) in out
    assert main(["cache", "prune", str(caches["runs"])]) == 2
    assert "needs --unused-days" in capsys.readouterr().err
    assert main(["cache", "prune", str(caches["runs"]), "--unused-days", "0"]) == 0
    assert "removed 4 of 4 cache entries" in capsys.readouterr().out
    assert find_caches([caches["runs"]]) == []
    assert main(["cache", "list", str(caches["runs"] / "missing")]) == 2
