"""What asrkd's disk caches hold, and deleting those not used for a while (`asrkd cache`).

Two caches grow without bound as runs come and go:
- teacher-output caches (asrkd.distill.cache): one folder per manifest, teacher and stored
  content, `<stem>.<teacher>.topk<k>.hidden<layers>[.notext]/` holding index.json and shards;
  a Whisper base's hidden states for 1.5 h of audio take ~1.2 GB;
- lexicon LMs (asrkd.lexicon_cache, eval.lm_cache): `<key>.arpa` beside `<key>.json`, ~100 MB
  for the real-speech recipe's trigram.
A killed teacher-cache build also leaves its half-written `<folder>.tmp`.

Each entry's last use is the modification time of its index.json (teacher caches) or of its
`.json` record (LMs): opening a teacher cache or reusing an LM marks it. `prune` deletes the
entries unused for at least the given time, never one in use: it takes, without waiting, the lock
a builder of the entry holds and, for a teacher cache, the lock every reader holds on its
index.json while open (asrkd.distill.cache.TeacherCache); an entry it cannot lock is reported as
in use and kept. An LM is read whole by the decoder as it starts, without a lock: a prune of an LM
in the seconds between its lookup and that read would fail that decoder's start, which is why
the age is required (a day or more is the sane use). Empty `.lock` files stay: they cost nothing,
and deleting one while a builder waits on it would let a second builder in beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from asrkd.files import tree_bytes

# What teacher_cache_name writes, read back
_TEACHER_DIR = re.compile(r"^(?P<stem>.+)\.(?P<teacher>[0-9a-f]{12})\.topk(?P<topk>\d+)"
                          r"\.hidden(?P<hidden>[0-9-]+|none)(?P<notext>\.notext)?$")  # fmt: skip
_LM_KEY = re.compile(r"^[0-9a-f]{32}$")


def teacher_cache_name(
    stem: str, fingerprint: str, topk: int, hidden_layers: tuple[int, ...], transcripts: bool
) -> str:
    """A teacher-output cache's folder name (asrkd.distill.cache.cache_dir_for):
    `<stem>.<12 hex digits of the teacher's fingerprint>.topk<k>.hidden<layers>[.notext]`,
    layers joined by "-" or "none", `.notext` where no transcripts are stored. Here, not beside
    the cache, so that `asrkd cache` reads the names without importing torch."""
    layers = "-".join(str(x) for x in hidden_layers) or "none"
    name = f"{stem}.{fingerprint[:12]}.topk{topk}.hidden{layers}"
    return name if transcripts else f"{name}.notext"


@dataclass(frozen=True)
class CacheEntry:
    """One deletable unit: kind "teacher" (a teacher-output cache folder), "lm" (an LM's ARPA
    text and record) or "partial" (a killed teacher-cache build's folder)."""

    kind: str
    path: Path  # the folder, or the LM's .arpa
    size: int  # bytes on disk
    last_used: float  # seconds since the epoch
    about: str  # what it holds, in words

    def files(self) -> tuple[Path, ...]:
        """What deleting the entry removes, in order (an LM's record first: without it the
        entry no longer counts as written)."""
        if self.kind == "lm":
            return (self.path.with_suffix(".json"), self.path)
        return (self.path,)

    def build_lock(self) -> Path:
        """The lock file a builder of this entry holds."""
        if self.kind == "lm":
            return self.path.with_suffix(".lock")
        if self.kind == "partial":
            return self.path.with_name(self.path.name[: -len(".tmp")] + ".lock")
        return self.path.with_name(self.path.name + ".lock")


def _stored_names(shard: Path) -> set[str]:
    """What a shard stores per utterance ("logits", "topk_vals", "hidden2", ...), from its
    safetensors header alone (numpy's loader: no torch to import)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(shard), framework="np") as fh:
            names = list(fh.keys())
    except (OSError, SafetensorError):  # missing or damaged: nothing said of its contents
        return set()
    return {name.split(".", 1)[1] for name in names if "." in name}


def _teacher_entry(folder: Path) -> CacheEntry | None:
    match = _TEACHER_DIR.match(folder.name)
    index = folder / "index.json"
    if not match or not index.is_file():
        return None
    try:
        record = json.loads(index.read_text())
        n, teacher = len(record["entries"]), record.get("teacher_path")
    except (ValueError, KeyError, TypeError):
        n, teacher = None, None
    hidden = match["hidden"]
    what = f"{n} utterances of {match['stem']}" if n is not None else f"{match['stem']} (?)"
    parts = [
        f"teacher {teacher} ({match['teacher']})" if teacher else f"teacher {match['teacher']}",
        what,
    ]
    stored = _stored_names(folder / "shard-00000.safetensors")
    if "logits" in stored:
        parts.append("logits")
    elif "topk_vals" in stored:
        parts.append(f"top-{match['topk']} logits")
    if hidden != "none":
        parts.append(f"hidden states of layers {hidden.replace('-', ', ')}")
    if not match["notext"]:
        parts.append("transcripts")
    size = tree_bytes(folder)
    return CacheEntry("teacher", folder, size, index.stat().st_mtime, "; ".join(parts))


def _lm_entry(arpa: Path) -> CacheEntry | None:
    record_path = arpa.with_suffix(".json")
    if not _LM_KEY.match(arpa.stem) or not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        inputs = record["inputs"]
        about = (
            f"order-{record['order']} word LM; vocabulary {inputs.get('vocabulary')}, "
            f"word pairs {inputs.get('bigrams')}"
        )
        if inputs.get("arpa"):
            about = f"order-{record['order']} word LM from {inputs['arpa'][0]}"
    except (ValueError, KeyError, TypeError, IndexError):
        about = "word LM (record unreadable)"
    size = arpa.stat().st_size + record_path.stat().st_size
    return CacheEntry("lm", arpa, size, record_path.stat().st_mtime, about)


def find_caches(roots: list[str | Path]) -> list[CacheEntry]:
    """Every cache entry under `roots` (folders searched to any depth; symbolic links are not
    followed, so a prune never reaches outside them), sorted by path. A root that does not
    exist raises FileNotFoundError."""
    found: dict[Path, CacheEntry] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder")
        if (entry := _teacher_entry(root)) is not None:  # a teacher cache named itself
            found[root] = entry
            continue
        for folder, dirs, names in os.walk(root):
            here = Path(folder)
            keep = []
            for name in dirs:
                sub = here / name
                if name.endswith(".tmp") and _TEACHER_DIR.match(name[: -len(".tmp")]):
                    size = tree_bytes(sub)
                    about = "an unfinished teacher-cache build (killed, or running now)"
                    found[sub] = CacheEntry("partial", sub, size, sub.stat().st_mtime, about)
                elif (entry := _teacher_entry(sub)) is not None:
                    found[sub] = entry
                else:
                    keep.append(name)  # not an entry: search inside it
            dirs[:] = keep
            for name in names:
                if name.endswith(".arpa") and (entry := _lm_entry(here / name)) is not None:
                    found[entry.path] = entry
    return [found[p] for p in sorted(found)]


@contextlib.contextmanager
def _locked(path: Path | None) -> Iterator[bool]:
    """An exclusive lock on `path` without waiting: True if taken (held for the block), False
    if someone holds it; True for no path or a file that does not exist (nobody holds it)."""
    if path is None:
        yield True
        return
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except FileNotFoundError:
        yield True
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def unused_for(entry: CacheEntry, now: float) -> float:
    """Seconds since the entry's last use."""
    return max(0.0, now - entry.last_used)


def prune(entries: list[CacheEntry], min_unused_s: float, dry_run: bool) -> dict[str, list]:
    """Delete the entries unused for at least `min_unused_s` seconds and not in use now (module
    docstring). Returns {"removed": [...], "in_use": [...], "recent": [...]} of entries;
    dry_run: report what would be removed, delete nothing."""
    now = time.time()
    out: dict[str, list] = {"removed": [], "in_use": [], "recent": []}
    for entry in entries:
        if unused_for(entry, now) < min_unused_s:
            out["recent"].append(entry)
            continue
        readers = entry.path / "index.json" if entry.kind == "teacher" else None
        with _locked(entry.build_lock()) as free, _locked(readers) as unread:
            if not (free and unread):
                out["in_use"].append(entry)
                continue
            if not dry_run:
                for path in entry.files():
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
            out["removed"].append(entry)
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def human_age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def table(entries: list[CacheEntry]) -> str:
    """The entries as aligned text: size, time since last use, kind, path, what it holds; then
    the total."""
    now = time.time()
    lines = [f"{'size':>9}  {'unused':>9}  {'kind':<7}  path: what it holds"]
    for e in entries:
        age = human_age(unused_for(e, now))
        lines.append(f"{human_bytes(e.size):>9}  {age:>9}  {e.kind:<7}  {e.path}: {e.about}")
    total = sum(e.size for e in entries)
    lines.append(f"{human_bytes(total):>9}  in {len(entries)} cache entries")
    return "\n".join(lines)
