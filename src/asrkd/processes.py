"""Worker processes that end with the process that started them.

A pool worker or sweep worker outlives its parent when the parent is killed by a signal it does
not handle (`kill PID`, a scheduler's SIGTERM or SIGKILL, the OOM killer): the worker finishes
the student it is training, unseen, writing into the very run folder that the user's next
`asrkd demo` resumes into. Each worker therefore watches its parent and exits when it is gone.
(torch.multiprocessing's workers, used by asrkd.distributed, do the same through prctl.)
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

# the exit status of a worker that stopped because its parent was gone (EX_TEMPFAIL: run again)
EXIT_PARENT_GONE = 75


def process_alive(pid: Any) -> bool:
    """Whether process `pid` of this machine runs (a zombie, never reaped, does not; a value
    that is not a process id is no process)."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:  # another user's live process
        return True
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def exit_with_parent(poll_seconds: float = 1.0) -> None:
    """Start a daemon thread that ends this process (status EXIT_PARENT_GONE) within
    `poll_seconds` of its parent's death: the process is then adopted by another (init or a
    subreaper), so its parent id changes. Files are written atomically (a temporary name, then a
    rename), so an exit between two writes loses at most the step being written; resuming
    picks up from the last checkpoint."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                os._exit(EXIT_PARENT_GONE)

    threading.Thread(target=watch, name="asrkd-exit-with-parent", daemon=True).start()


def spawn_pool(n_workers: int, env: dict[str, str] | None = None) -> ProcessPoolExecutor:
    """A process pool of fresh interpreters (spawn: forking a parent that holds torch or
    onnxruntime thread pools is unsafe) whose workers exit when this process dies; `env`'s
    variables are set in each worker before its first task where the parent's environment does
    not set them (e.g. asrkd.precision.INFERENCE_ENV for workers that only score models)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(
        n_workers, mp_context=ctx, initializer=_start_worker, initargs=(dict(env or {}),)
    )


def _start_worker(env: dict[str, str]) -> None:
    for key, value in env.items():
        os.environ.setdefault(key, value)
    exit_with_parent()
