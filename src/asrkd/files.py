"""Files asrkd writes and reads back: atomic writes, and digests of asrkd's own source.

Torch-free: the on-device path (asrkd.ondevice) and the lexicon decoder's LM cache use it too.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import secrets
import time
from pathlib import Path

from asrkd.processes import process_alive

log = logging.getLogger(__name__)

# atomic_write's temporary names: .<name>.<writer's pid>.<12 hex>.tmp
_TMP_RE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{12}\.tmp$")


def tree_files(root: str | Path) -> list[Path]:
    """Every file under `root`, sorted, following links to folders: a corpus is often assembled
    from symbolic links (speakers, chapters, a user's folders), which Path.rglob does not enter
    before Python 3.13, so their audio would be left out without a word. Each real folder is
    walked once, so a link cycle ends and two links to one folder do not list its files twice."""
    seen: set[str] = set()
    files = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders.sort()  # the first path to a folder is the one its files keep
        files += [Path(folder) / name for name in names]
    return sorted(files)


def tree_bytes(folder: str | Path) -> int:
    """Bytes of the files under `folder` (links not followed; a file removed meanwhile counts 0)."""
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


def mark_used(path: str | Path) -> None:
    """Set `path`'s modification time to now: a cache entry's last use, as `asrkd cache`
    reports and prunes by (asrkd.caches). A read-only disk is used all the same."""
    with contextlib.suppress(OSError):
        os.utime(path)


def atomic_write(path: str | Path, write) -> None:
    """Call write(tmp_path) and rename the result over `path` (same directory, so atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp, and safetensors also writes 0600: a model file is for sharing, so it gets the
    # mode the umask gives a new file (read here from the placeholder, without touching the umask).
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"))
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = os.stat(tmp).st_mode & 0o777
    try:
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temporaries(folder: str | Path, min_age_s: float = 600.0) -> list[Path]:
    """Delete atomic_write's temporary files in `folder` left by a writer killed mid-write (a
    checkpoint holds ~12 bytes per trained parameter): its process is gone and the file is older
    than `min_age_s` (a write takes seconds; the age also spares a writer on another host of a
    shared filesystem, whose process id means nothing here). Returns the files removed."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        match = _TMP_RE.match(path.name)
        if not match or process_alive(match.group(1)):
            continue
        try:
            if time.time() - path.stat().st_mtime < min_age_s:
                continue
            path.unlink()
        except FileNotFoundError:  # removed meanwhile
            continue
        removed.append(path)
    if removed:
        log.warning("removed %d temporary file(s) of killed writes: %s", len(removed), removed)
    return removed


@functools.cache
def code_fingerprint(files: tuple[str, ...] = ()) -> str:
    """12 hex digits of the SHA-256 of asrkd's own source files (paths and contents), or of
    `files` alone (paths relative to the package, e.g. "lexicon/lm.py"): the code a table was
    measured with, or a cached LM built with. In the demo's scoring stamps, so a recipe run after
    any change to asrkd measures every row again rather than reusing a table the new code would
    not give."""
    root = Path(__file__).resolve().parent
    if files:
        paths = sorted(root / name for name in files)
    else:
        paths = sorted(p for p in root.rglob("*") if p.suffix in (".py", ".txt") and p.is_file())
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]
