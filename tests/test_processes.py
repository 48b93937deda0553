"""Pool workers end with the process that started them (asrkd.processes): a demo killed by a
signal it cannot handle must not leave students training into the folders its next run resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asrkd.processes import process_alive, spawn_pool

PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from pathlib import Path

from asrkd.processes import spawn_pool


def sleeper(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


if __name__ == "__main__":
    folder, kind = Path(sys.argv[1]), sys.argv[2]
    if kind == "asrkd":
        pool = spawn_pool(2)
    else:  # the executor as the demo used it before asrkd.processes
        pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    for i in range(2):
        pool.submit(sleeper, str(folder / f"worker{i}"))
    time.sleep(120)
"""


def _worker_pids(folder: Path, parent: subprocess.Popen) -> list[int]:
    deadline = time.monotonic() + 60
    files = [folder / "worker0", folder / "worker1"]
    while not all(f.is_file() and f.read_text() for f in files):
        assert parent.poll() is None, "the parent script died"
        assert time.monotonic() < deadline, "the pool's workers did not start"
        time.sleep(0.1)
    return [int(f.read_text()) for f in files]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc")
@pytest.mark.parametrize("kind", ["asrkd", "plain"])
def test_pool_workers_exit_when_their_parent_is_killed(tmp_path, kind):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    with (tmp_path / "parent.log").open("wb") as log:  # the killed pool's semaphore warnings
        parent = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), kind], env=env, stdout=log, stderr=log
        )
    try:
        pids = _worker_pids(tmp_path, parent)
        parent.kill()  # SIGKILL: no handler, no cleanup runs in the parent
        parent.wait()
        deadline = time.monotonic() + (10 if kind == "asrkd" else 3)
        while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [p for p in pids if process_alive(p)]
        if kind == "asrkd":
            assert survivors == [], "workers outlived their parent"
        else:  # the bug the watch mends: without it the workers go on
            assert survivors == pids
    finally:
        if parent.poll() is None:
            parent.kill()
        for f in tmp_path.glob("worker*"):
            if f.read_text():
                try:
                    os.kill(int(f.read_text()), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_pool_workers_start_with_the_given_environment(monkeypatch):
    """spawn_pool(env=...): each worker has the variables before its first task, the parent's
    own settings winning (as `asrkd evaluate` treats INFERENCE_ENV), and the parent unchanged."""
    monkeypatch.setenv("ASRKD_TEST_SET_BY_USER", "mine")
    monkeypatch.delenv("ASRKD_TEST_NEW", raising=False)
    env = {"ASRKD_TEST_NEW": "16", "ASRKD_TEST_SET_BY_USER": "16"}
    with spawn_pool(1, env=env) as pool:
        seen = {k: pool.submit(os.getenv, k).result(timeout=60) for k in env}
    assert seen == {"ASRKD_TEST_NEW": "16", "ASRKD_TEST_SET_BY_USER": "mine"}
    assert "ASRKD_TEST_NEW" not in os.environ
