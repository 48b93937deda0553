"""Teacher-output cache: equal to the online teacher, top-k, reuse, staleness, lookups."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from lhotse import CutSet

from asrkd.data.dataset import collate
from asrkd.data.text import Tokenizer
from asrkd.distill import cache as cache_mod
from asrkd.distill.cache import TeacherCache, build_cache, cache_dir_for
from asrkd.distill.losses import frame_kl
from asrkd.distill.teachers import CheckpointTeacher, TeacherRequest
from asrkd.models import build_model
from asrkd.models.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

FULL = TeacherRequest(logits=True, transcripts=True, hidden_layers=(0, 1))
FP16 = {"atol": 1e-2, "rtol": 1e-3}


class CountingTeacher:
    """Wraps a teacher, counting calls; raises on call number `fail_at` (1-based) if given."""

    def __init__(self, teacher: CheckpointTeacher, fail_at: int = 0) -> None:
        self.teacher, self.tokenizer, self.calls, self.fail_at = (
            teacher,
            teacher.tokenizer,
            0,
            fail_at,
        )

    def fingerprint(self) -> str:
        return self.teacher.fingerprint()

    def __call__(self, feats, feat_lens, request):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("teacher crashed")
        return self.teacher(feats, feat_lens, request)


@pytest.fixture(scope="module")
def teacher(tiny_teacher: Path) -> CheckpointTeacher:
    return CheckpointTeacher(tiny_teacher)


@pytest.fixture(scope="module")
def other_teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("other_teacher") / "model.safetensors"
    save_checkpoint(path, build_model("tiny", 29, 80, 0.1), Tokenizer())
    return path


def online(teacher, cuts_path: Path, cut_ids: list[str], request: TeacherRequest):
    cuts = CutSet.from_file(cuts_path).subset(cut_ids=cut_ids)
    batch = collate(CutSet.from_cuts(cuts[c] for c in cut_ids), teacher.tokenizer)
    return teacher(batch.feats, batch.feat_lens, request)


def test_cache_round_trip_equals_online_teacher(teacher, prepared_parts, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "SHARD_SIZE", 4)  # 10 cuts -> 3 shards, lookups across them
    cuts_path = prepared_parts["dev"]
    cache = build_cache(teacher, cuts_path, FULL, cache_root=tmp_path, progress=False)
    assert len(list(cache.directory.glob("shard-*.safetensors"))) == 3
    ids = sorted(c.id for c in CutSet.from_file(cuts_path))
    assert len(cache) == len(ids) == 10
    picked = [ids[7], ids[0], ids[4], ids[9]]  # another order and grouping than the build's
    want = online(teacher, cuts_path, picked, FULL)
    got = cache.get(picked, FULL)
    assert torch.equal(got.lengths, want.lengths)
    assert got.transcripts == want.transcripts
    assert any(t for t in got.transcripts)  # a trained teacher says something
    for i, n in enumerate(want.lengths.tolist()):
        torch.testing.assert_close(got.logits[i, :n], want.logits[i, :n], **FP16)
        for layer in (0, 1):
            torch.testing.assert_close(got.hidden[layer][i, :n], want.hidden[layer][i, :n], **FP16)
        assert torch.all(got.logits[i, n:] == 0)  # padding


def test_top_k_cache_keeps_the_k_largest_logits(teacher, prepared_parts, tmp_path) -> None:
    request = TeacherRequest(logits=True)
    cuts_path = prepared_parts["dev"]
    cache = build_cache(teacher, cuts_path, request, topk=3, cache_root=tmp_path, progress=False)
    assert ".topk3." in cache.directory.name
    ids = sorted(cache.entries)[:3]
    want = online(teacher, cuts_path, ids, request)
    got = cache.get(ids, request)
    for i, n in enumerate(want.lengths.tolist()):
        kept = torch.isfinite(got.logits[i, :n])
        assert torch.all(kept.sum(-1) == 3)
        top = want.logits[i, :n].topk(3, dim=-1)
        assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, top.indices, True))
        torch.testing.assert_close(got.logits[i, :n].gather(-1, top.indices), top.values, **FP16)
    student = torch.randn_like(got.logits, requires_grad=True)
    loss = frame_kl(student, got.logits, got.lengths, temperature=2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_second_build_reuses_without_running_the_teacher(teacher, prepared_parts, tmp_path):
    request = TeacherRequest(logits=True)
    first = CountingTeacher(teacher)
    cache = build_cache(first, prepared_parts["dev"], request, cache_root=tmp_path, progress=False)
    assert first.calls >= 1
    index = cache.directory / "index.json"
    written = (index.stat().st_ino, index.read_bytes())  # a rebuild renames a new folder in
    written_at = index.stat().st_mtime_ns
    again = CountingTeacher(teacher)
    reused = build_cache(
        again,
        prepared_parts["dev"],
        TeacherRequest(transcripts=True),
        cache_root=tmp_path,
        progress=False,
    )
    assert again.calls == 0  # logit and sequence runs share one cache
    assert reused.directory == cache.directory
    assert (index.stat().st_ino, index.read_bytes()) == written
    assert index.stat().st_mtime_ns > written_at  # opened again: its last use, for asrkd cache


def test_other_teacher_file_gets_its_own_cache(
    teacher, other_teacher_file, prepared_parts, tmp_path
) -> None:
    request = TeacherRequest(logits=True)
    cuts_path = prepared_parts["dev"]
    old = build_cache(teacher, cuts_path, request, cache_root=tmp_path, progress=False)
    other = CheckpointTeacher(other_teacher_file)
    counting = CountingTeacher(other)
    new = build_cache(counting, cuts_path, request, cache_root=tmp_path, progress=False)
    assert counting.calls >= 1
    assert new.directory != old.directory and new.directory.parent == old.directory.parent
    ids = sorted(new.entries)[:2]
    want = online(other, cuts_path, ids, request)
    n = int(want.lengths[0])
    torch.testing.assert_close(new.get(ids, request).logits[0, :n], want.logits[0, :n], **FP16)
    # the first teacher's cache is still there and still its own: reused, the teacher not run
    first = CountingTeacher(teacher)
    again = build_cache(first, cuts_path, request, cache_root=tmp_path, progress=False)
    assert first.calls == 0 and again.directory == old.directory and again.key == old.key


def test_changed_manifest_makes_the_cache_stale(teacher, prepared_parts, tmp_path, caplog):
    request = TeacherRequest(logits=True)
    cuts_path = tmp_path / "cuts_dev.jsonl.gz"
    cuts = CutSet.from_file(prepared_parts["dev"]).to_eager()
    cuts.to_file(cuts_path)
    old = build_cache(teacher, cuts_path, request, cache_root=tmp_path / "c", progress=False)
    cuts.subset(first=5).to_file(cuts_path)  # same name, other content
    counting = CountingTeacher(teacher)
    with caplog.at_level(logging.WARNING, logger="asrkd.distill.cache"):
        new = build_cache(counting, cuts_path, request, cache_root=tmp_path / "c", progress=False)
    assert counting.calls >= 1
    assert any("stale" in r.getMessage() for r in caplog.records)
    assert new.directory == old.directory and new.key != old.key and len(new) == 5


def test_interrupted_build_never_looks_complete(teacher, prepared_parts, tmp_path) -> None:
    request = TeacherRequest(logits=True)
    crashing = CountingTeacher(teacher, fail_at=2)
    with pytest.raises(RuntimeError, match="teacher crashed"):
        build_cache(
            crashing,
            prepared_parts["dev"],
            request,
            cache_root=tmp_path,
            batch_seconds=3.0,
            progress=False,
        )
    directory = cache_dir_for(prepared_parts["dev"], tmp_path, request, 0, teacher.fingerprint())
    assert not (directory / "index.json").exists()
    cache = build_cache(
        teacher,
        prepared_parts["dev"],
        request,
        cache_root=tmp_path,
        batch_seconds=3.0,
        progress=False,
    )
    assert len(cache) == 10
    left = [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    assert left == [directory.name]  # no leftover .tmp
    assert len(TeacherCache(directory)) == 10


def test_missing_cut_or_layer_is_a_key_error(teacher, prepared_parts, tmp_path) -> None:
    request = TeacherRequest(logits=True, hidden_layers=(1,))
    cache = build_cache(
        teacher, prepared_parts["dev"], request, cache_root=tmp_path, progress=False
    )
    some = min(cache.entries)
    with pytest.raises(KeyError, match="lacks cuts"):
        cache.get([some, "no-such-cut"], request)
    with pytest.raises(KeyError, match="hidden layers"):
        cache.get([some], TeacherRequest(hidden_layers=(0,)))


def test_cache_folders_per_stored_content(tmp_path: Path) -> None:
    cuts = tmp_path / "cuts_train.jsonl.gz"
    fp = "0123456789abcdef" * 4
    logit = cache_dir_for(cuts, None, TeacherRequest(logits=True), 0, fp)
    assert logit == tmp_path / "teacher_cache" / "cuts_train.0123456789ab.topk0.hiddennone"
    assert cache_dir_for(cuts, None, TeacherRequest(transcripts=True), 0, fp) == logit
    assert cache_dir_for(cuts, None, TeacherRequest(hidden_layers=(1, 3)), 0, fp).name.endswith(
        "hidden1-3"
    )
    assert cache_dir_for(cuts, tmp_path / "x", TeacherRequest(), 5, fp).parent == tmp_path / "x"
    # another teacher's cache lives beside this one instead of replacing it
    other = cache_dir_for(cuts, None, TeacherRequest(logits=True), 0, "f" * 64)
    assert other.parent == logit.parent and other != logit


def test_checkpoint_teacher_rejects_layers_it_lacks(teacher, prepared_parts) -> None:
    with pytest.raises(ValueError, match="layers"):
        first = next(iter(CutSet.from_file(prepared_parts["dev"]))).id
        online(teacher, prepared_parts["dev"], [first], TeacherRequest(hidden_layers=(2,)))
