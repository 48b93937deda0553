"""Sweeps spread over "machines" through one PostgreSQL database (docs/sweeps.md, "Several
machines"): a throwaway server in a temporary folder; two `asrkd sweep` processes, each with its
own --out, share one study; a machine lost mid-trial is taken over by the other. Skipped where
PostgreSQL's server programs or the psycopg driver are missing."""

from __future__ import annotations

import glob
import importlib.util
import os
import pickle
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from asrkd.config import ConfigError, SweepConfig
from asrkd.sweep import RESULTS, make_spec, open_storage, open_study, read_rows
from tests.test_sweep import ROOT, _killed_mid_trial, _wait_for, base_config

GRID = {"distill.weight": [0.1, 0.5]}  # + the baseline = 3 grid points
NAMES = ["000-none-s0", "001-logit-w0.1-s0", "002-logit-w0.5-s0"]


def _server_programs() -> Path | None:
    """The folder with initdb and pg_ctl (on PATH, or Debian's /usr/lib/postgresql/N/bin)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


@pytest.fixture(scope="module")
def postgres_url():
    """A database URL of a private PostgreSQL server (Unix socket only, no password)."""
    pytest.importorskip("psycopg")  # the `postgres` extra
    bin_dir = _server_programs()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    run_as: list[str] = []
    # its own short folder: a socket path has ~100 characters at most, and pytest's folders are
    # private to root
    folder = Path(tempfile.mkdtemp(prefix="asrkd-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser")
        run_as = ["runuser", "-u", "postgres", "--"]
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port = folder / "data", 5432  # the socket lives in `folder`: no port is taken
    ctl = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data)]
    options = f"-k {folder} -p {port} -c listen_addresses=''"
    try:
        _run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "asrkd"])
        _run([*ctl, "-o", options, "-l", str(folder / "server.log"), "-w", "start"])
        import psycopg

        with psycopg.connect(
            dbname="postgres", user="asrkd", host=str(folder), port=port, autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE asrkd")
        yield f"postgresql://asrkd@/asrkd?host={folder}&port={port}"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")


def _start_machine(base, cfg: SweepConfig, out: Path) -> subprocess.Popen:
    """`asrkd sweep` as another machine would run it: its own process group and --out."""
    code = (
        "import pickle, sys; from asrkd.sweep import sweep; "
        "sweep(*pickle.loads(bytes.fromhex(sys.argv[1])))"
    )
    args = pickle.dumps((base, GRID, {}, cfg, out)).hex()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    return subprocess.Popen([sys.executable, "-c", code, args], env=env, start_new_session=True)


def _stop(machines: list[subprocess.Popen]) -> None:
    """Kill what still runs (a failed assertion must not leave sweeps on the machine)."""
    for proc in machines:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _study(base, cfg: SweepConfig, out: Path) -> optuna.Study:
    return open_study(make_spec(base, GRID, {}, cfg), cfg, out)


@pytest.mark.slow
def test_two_machines_share_one_study(sweep_data: dict, postgres_url: str, tmp_path) -> None:
    base = base_config(sweep_data, steps=20)
    cfg = SweepConfig(storage=postgres_url, study_name="shared", heartbeat_seconds=1)
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    _study(base, cfg, outs[0])  # one machine first creates the study (docs/sweeps.md)
    machines = [_start_machine(base, cfg, out) for out in outs]
    try:
        for proc in machines:
            assert proc.wait(timeout=300) == 0
    finally:
        _stop(machines)
    rows = [r for out in outs for r in read_rows(out / RESULTS)]
    # every grid point ran once, on one machine or the other, and nothing ran twice
    assert sorted(r["name"] for r in rows) == NAMES
    assert all(r["state"] == "COMPLETE" and r["steps"] == 20 for r in rows)
    study = _study(base, cfg, outs[0])
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(int(t.params["point"]) for t in complete) == [0, 1, 2]


@pytest.mark.slow
def test_a_lost_machine_is_taken_over(sweep_data: dict, postgres_url: str, tmp_path) -> None:
    """Machine A dies mid-trial (SIGKILL to its process group): its trial stays RUNNING in the
    database until its heartbeat is `grace_seconds` old; machine B then fails it, retries it and
    finishes the grid. B cannot see A's folder, so the retried run starts again from step 0."""
    base = base_config(sweep_data, steps=20)
    cfg = SweepConfig(storage=postgres_url, study_name="lost", heartbeat_seconds=1, grace_seconds=3)
    lost, taker = tmp_path / "machine-a", tmp_path / "machine-b"
    proc = _start_machine(base, cfg, lost)
    try:
        _wait_for(lambda: (lost / "trials").is_dir() and _killed_mid_trial(lost), 240, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_by_a = sorted(r["name"] for r in read_rows(lost / RESULTS))
    assert 1 <= len(done_by_a) < len(NAMES)
    running = _study(base, cfg, lost).get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert len(running) == 1  # the database still thinks A is working on it

    t0 = time.monotonic()
    taker_proc = _start_machine(base, cfg, taker)
    try:
        assert taker_proc.wait(timeout=300) == 0
    finally:
        _stop([taker_proc])
    done_by_b = sorted(r["name"] for r in read_rows(taker / RESULTS))
    assert sorted(done_by_a + done_by_b) == NAMES  # each point once over both machines
    assert all(r["state"] == "COMPLETE" and r["steps"] == 20 for r in read_rows(taker / RESULTS))
    trials = _study(base, cfg, lost).trials
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1  # A's lost trial, failed as stale
    assert optuna.trial.TrialState.RUNNING not in states
    assert time.monotonic() - t0 < 240


@pytest.mark.parametrize(
    "url, hint",
    [
        ("mysql+pymysql://asrkd:s3cret@db.example.org/asrkd", "driver the URL names"),
        ("mysql+nosuchdriver://asrkd:s3cret@db.example.org/asrkd", "driver the URL names"),
        ("postgres://asrkd:s3cret@db.example.org/asrkd", "postgresql://"),
        ("mysql+pymysql://asrkd@db.example.org/asrkd?password=s3cret", "driver the URL names"),
    ],
)
def test_a_missing_database_driver_is_a_config_error_without_the_password(url, hint) -> None:
    if importlib.util.find_spec("pymysql") is not None:
        pytest.skip("pymysql is installed: the URL would be tried for real")
    with pytest.raises(ConfigError) as err:
        open_storage(url, SweepConfig(storage=url))
    message = str(err.value)
    assert "db.example.org" in message and hint in message and "s3cret" not in message
