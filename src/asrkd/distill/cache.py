"""Teacher-output cache: run the teacher once over a cut set and store what strategies need.

Layout of a cache folder (beside the manifests by default)::

    teacher_cache/<stem>.<teacher>.topk<k>.hidden<layers>/
        index.json                  key, cut id -> (shard, row, frames), teacher transcripts
                                    (None: one the teacher could not write in the student's
                                    units)
        shard-00000.safetensors     per cut: logits (fp16, T' x V, or top-k values + ids)
                                    and the requested hidden states (fp16, T' x D)

<teacher> is the first 12 hex digits of the teacher's fingerprint: each teacher's cache lives
beside the others', so comparing teachers (or a sweep over them) never rebuilds one it has.
A teacher that hears audio (hf-ctc, whisper) stores transcripts only when asked; a folder
without them ends in ``.notext``.

`index.json` holds a key hashed from the teacher's fingerprint, the manifest's bytes and the
feature settings; a cache whose key differs is stale and is rebuilt. The folder is written under
a temporary name and renamed, so an interrupted build never looks complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from asrkd.caches import teacher_cache_name
from asrkd.data.dataset import DataError, collate, duration_batches
from asrkd.distill.teachers import Teacher, TeacherOutput, TeacherRequest, file_sha256
from asrkd.files import mark_used

log = logging.getLogger(__name__)

SHARD_SIZE = 2000  # utterances per shard file


def stores_transcripts(teacher: Teacher, request: TeacherRequest) -> bool:
    """Transcripts are stored always (they are cheap beside the logits), except for a teacher
    that hears audio (hf-ctc, whisper), where they cost more than all else: only when asked."""
    return request.transcripts or not getattr(teacher, "needs_audio", False)


def cache_key(teacher: Teacher, cuts_path: str | Path, request: TeacherRequest, topk: int) -> str:
    first = next(iter(CutSet.from_file(cuts_path)))
    feats = first.features
    parts = {
        "teacher": teacher.fingerprint(),
        "manifest": file_sha256(cuts_path),
        "features": [feats.type, feats.num_features, feats.frame_shift, feats.sampling_rate],
        "hidden_layers": list(request.hidden_layers),
        "topk": topk,
    }
    if not stores_transcripts(teacher, request):
        parts["transcripts"] = False
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cache_dir_for(
    cuts_path: str | Path,
    cache_root: str | Path | None,
    request: TeacherRequest,
    topk: int,
    teacher_fingerprint: str,
    transcripts: bool = True,
) -> Path:
    """One folder per manifest, teacher and stored content: logits and transcripts are always
    stored (they are small; `transcripts` False: a teacher that computes none), hidden layers
    and top-k only as asked, so `logit` and `sequence` runs share a cache while a run wanting
    other hidden layers, or another teacher, gets its own (asrkd.caches.teacher_cache_name)."""
    cuts_path = Path(cuts_path)
    stem = cuts_path.name.split(".")[0]
    root = Path(cache_root) if cache_root else cuts_path.parent / "teacher_cache"
    name = teacher_cache_name(stem, teacher_fingerprint, topk, request.hidden_layers, transcripts)
    return root / name


def _pack(out: TeacherOutput, i: int, topk: int) -> dict[str, Tensor]:
    n = int(out.lengths[i])
    tensors = {}
    if out.logits is not None:
        logits = out.logits[i, :n].float()
        if topk:
            vals, ids = logits.topk(topk, dim=-1)
            tensors["topk_vals"], tensors["topk_ids"] = vals.half(), ids.to(torch.int32)
        else:
            tensors["logits"] = logits.half()
    for layer, h in out.hidden.items():
        tensors[f"hidden{layer}"] = h[i, :n].half()
    return tensors


def build_cache(
    teacher: Teacher,
    cuts_path: str | Path,
    request: TeacherRequest,
    topk: int = 0,
    cache_root: str | Path | None = None,
    batch_seconds: float = 200.0,
    progress: bool = True,
) -> TeacherCache:
    """Run `teacher` over every cut of the manifest (clean features) and store its outputs;
    reuse the existing cache when its key matches."""
    directory = cache_dir_for(cuts_path, cache_root, request, topk, teacher.fingerprint(),
                              stores_transcripts(teacher, request))  # fmt: skip
    directory.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time per cache folder (parallel sweep workers, runs sharing a disk);
    # the others wait, then find the finished cache and reuse it.
    with open(directory.with_name(directory.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(teacher, cuts_path, request, topk, directory, batch_seconds, progress)


def _build_locked(
    teacher, cuts_path, request, topk, directory: Path, batch_seconds: float, progress: bool
) -> TeacherCache:
    key = cache_key(teacher, cuts_path, request, topk)
    index_path = directory / "index.json"
    if index_path.is_file():
        if json.loads(index_path.read_text())["key"] == key:
            log.info("teacher cache %s is up to date", directory)
            return TeacherCache(directory)
        log.warning(
            "teacher cache %s is stale (teacher, data or request changed): rebuilding", directory
        )
    cuts = CutSet.from_file(cuts_path).to_eager()
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    entries, texts, shard, rows = {}, {}, {}, 0
    batches = duration_batches(cuts, batch_seconds)
    offers = getattr(teacher, "offers", None)  # a teacher that gives only some outputs
    logits = offers.logits if offers is not None else True
    texts_too = stores_transcripts(teacher, request)
    full_request = TeacherRequest(logits, texts_too, request.hidden_layers)
    needs_audio = getattr(teacher, "needs_audio", False)
    for group in tqdm(batches, desc="teacher cache", unit="batch", disable=not progress):
        batch = collate(CutSet.from_cuts(group), teacher.tokenizer)
        extra = {}
        if needs_audio:  # in the batch's order; prepare made every recording mono
            by_id = {c.id: c for c in group}
            extra["audio"] = [_audio(by_id[i]) for i in batch.cut_ids]
        out = teacher(batch.feats, batch.feat_lens, full_request, **extra)
        for i, cut_id in enumerate(batch.cut_ids):
            n_shard = rows // SHARD_SIZE
            for name, tensor in _pack(out, i, topk).items():
                shard[f"{rows}.{name}"] = tensor.contiguous()
            entries[cut_id] = [n_shard, rows, int(out.lengths[i])]
            if texts_too:
                texts[cut_id] = out.transcripts[i]
            rows += 1
            if rows % SHARD_SIZE == 0:
                save_file(shard, str(tmp / f"shard-{n_shard:05d}.safetensors"))
                shard = {}
    if shard:
        save_file(shard, str(tmp / f"shard-{(rows - 1) // SHARD_SIZE:05d}.safetensors"))
    index = {
        "key": key,
        "topk": topk,
        "vocab_size": teacher.tokenizer.vocab_size,
        "entries": entries,
        "texts": texts,
        "hidden_layers": list(request.hidden_layers),
        # for people (`asrkd cache list`); the key holds the teacher's fingerprint
        "teacher_path": str(getattr(teacher, "path", "")) or None,
    }
    (tmp / "index.json").write_text(json.dumps(index))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return TeacherCache(directory)


def _audio(cut) -> tuple[np.ndarray, int]:
    """(mono samples, sample rate) of a cut, for a teacher that hears audio."""
    try:
        samples = cut.load_audio()
    except Exception as err:
        raise DataError(f"cut {cut.id}: cannot load its audio for the teacher ({err})") from err
    return np.asarray(samples, np.float32).mean(axis=0), int(cut.sampling_rate)


class TeacherCache:
    """Stored teacher outputs, looked up by cut id and padded into batches.

    While open it holds a shared lock on its index.json (`asrkd cache prune` deletes only a
    cache nobody holds) and it marks the index's modification time as the cache's last use."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index_path = self.directory / "index.json"
        # closed, and the lock released, with the object
        self._in_use = open(index_path, "rb")  # noqa: SIM115
        try:
            fcntl.flock(self._in_use, fcntl.LOCK_SH)
        except OSError as err:  # a filesystem without locks: readable all the same
            log.debug("teacher cache %s: no shared lock (%s)", self.directory, err)
        mark_used(index_path)
        index = json.loads(self._in_use.read())
        self.key, self.topk, self.vocab_size = index["key"], index["topk"], index["vocab_size"]
        self.entries, self.texts = index["entries"], index["texts"]
        self.hidden_layers = tuple(index["hidden_layers"])
        self._shards: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _shard(self, n: int):
        if n not in self._shards:
            path = self.directory / f"shard-{n:05d}.safetensors"
            self._shards[n] = safe_open(str(path), framework="pt")
        return self._shards[n]

    def _logits(self, shard, row: int) -> Tensor:
        if not self.topk:
            return shard.get_tensor(f"{row}.logits").float()
        vals = shard.get_tensor(f"{row}.topk_vals").float()
        ids = shard.get_tensor(f"{row}.topk_ids").long()
        dense = torch.full((vals.shape[0], self.vocab_size), float("-inf"))
        return dense.scatter_(1, ids, vals)

    def get(self, cut_ids: list[str], request: TeacherRequest) -> TeacherOutput:
        """Batch (B = len(cut_ids)) of stored outputs, zero-padded to the longest."""
        missing = [c for c in cut_ids if c not in self.entries]
        if missing:
            raise KeyError(f"teacher cache {self.directory} lacks cuts, e.g. {missing[0]}")
        absent = set(request.hidden_layers) - set(self.hidden_layers)
        if absent:
            raise KeyError(f"teacher cache {self.directory} holds no hidden layers {absent}")
        lengths = torch.tensor([self.entries[c][2] for c in cut_ids])
        t_max = int(lengths.max())
        out = TeacherOutput(lengths=lengths)
        if request.logits:
            out.logits = torch.zeros(len(cut_ids), t_max, self.vocab_size)
        for layer in request.hidden_layers:
            out.hidden[layer] = None
        for i, cut_id in enumerate(cut_ids):
            n_shard, row, n = self.entries[cut_id]
            if request.logits:
                out.logits[i, :n] = self._logits(self._shard(n_shard), row)
            for layer in request.hidden_layers:
                h = self._shard(n_shard).get_tensor(f"{row}.hidden{layer}").float()
                if out.hidden[layer] is None:
                    out.hidden[layer] = torch.zeros(len(cut_ids), t_max, h.shape[1])
                out.hidden[layer][i, :n] = h
        if request.transcripts:
            out.transcripts = [self.texts[c] for c in cut_ids]
        return out
