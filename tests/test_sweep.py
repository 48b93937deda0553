"""Sweeps: grid parsing and expansion, and a real tiny sweep that is killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from asrkd.config import ConfigError, SweepConfig, load_config
from asrkd.evaluation import MEMORY_PROBE
from asrkd.report import report
from asrkd.sweep import (
    RESULTS,
    _reporter,
    fail_dead_workers,
    open_study,
    pending,
    read_rows,
    sweep,
    trial_point,
)
from asrkd.sweep_grid import (
    expand_grid,
    make_spec,
    parse_grid,
    point_config,
    point_name,
    relevant,
)

ROOT = Path(__file__).resolve().parents[1]


def tiny_overrides(manifests: dict, steps: int, out_dir: Path | str) -> list[str]:
    return [
        f"data.train_cuts={manifests['train']}",
        f"data.dev_cuts={manifests['dev']}",
        f"data.test_cuts=[{manifests['test']}]",
        "data.max_batch_seconds=20",
        f"train.max_steps={steps}",
        f"train.eval_every={steps // 2}",
        f"train.checkpoint_every={steps // 2}",
        "train.warmup_steps=5",
        "train.threads=1",
        "eval.threads=1",
        "eval.latency_utterances=2",
        "model.preset=tiny",
        "train.progress=false",
        f"train.out_dir={out_dir}",
    ]


def base_config(sweep_data: dict, steps: int = 20):
    overrides = tiny_overrides(sweep_data, steps, "unused")
    return load_config(
        None, [*overrides, "distill.strategy=logit", f"teacher.path={sweep_data['teacher']}"]
    )


# ---------------------------------------------------------------------------------------------
# Parsing and expansion (no training).


def test_parse_grid_values_and_ranges() -> None:
    grid, ranges = parse_grid(
        [
            "distill.weight=0,0.02,0.5",
            "distill.strategy=none,logit",
            "train.lr=1e-3,2e-3",
            "train.progress=true",
            "distill.temperature=1.0:4",
            "train.warmup_steps=10:100:log",
        ]
    )
    assert grid == {
        "distill.weight": [0, 0.02, 0.5],
        "distill.strategy": ["none", "logit"],
        "train.lr": [0.001, 0.002],  # YAML 1.1 reads 1e-3 as a string; we do not
        "train.progress": [True],
    }
    assert ranges == {"distill.temperature": (1.0, 4, False), "train.warmup_steps": (10, 100, True)}


@pytest.mark.parametrize(
    "item", ["distill.weight", "=1,2", "distill.weight=", "distill.weight=0.9:0.1"]
)
def test_parse_grid_rejects(item: str) -> None:
    with pytest.raises(ConfigError):
        parse_grid([item])


def test_parse_grid_rejects_a_key_twice() -> None:
    with pytest.raises(ConfigError, match="twice"):
        parse_grid(["distill.weight=0,1", "distill.weight=0:1"])


def test_expand_grid_runs_the_baseline_once_per_seed() -> None:
    grid, _ = parse_grid(
        [
            "distill.weight=0,0.02,0.1,0.3,0.5,0.9",
            "distill.temperature=1,2,4",
            "distill.strategy=none,logit",
        ]
    )
    points = expand_grid(grid, load_config(None), seeds=3)
    baselines = [p for p in points if p["distill.strategy"] == "none"]
    assert baselines == [{"distill.strategy": "none", "train.seed": s} for s in range(3)]
    assert len(points) == 3 + 6 * 3 * 3
    assert all(list(p)[-1] == "train.seed" for p in points)  # the seed is the last dimension
    assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points)
    names = [point_name(i, p) for i, p in enumerate(points)]
    assert len(set(names)) == len(names) and names[0] == "000-none-s0"


def test_expand_grid_adds_the_baseline_and_keeps_what_it_reads() -> None:
    base = load_config(None, ["distill.strategy=logit", "teacher.path=t.safetensors"])
    grid = {"distill.weight": [0.1, 0.5], "model.preset": ["tiny", "demo-student-xs"]}
    points = expand_grid(grid, base, seeds=1)
    baselines = [p for p in points if p["distill.strategy"] == "none"]
    assert baselines == [  # one reference per student size: the baseline reads model.preset
        {"distill.strategy": "none", "model.preset": "tiny", "train.seed": 0},
        {"distill.strategy": "none", "model.preset": "demo-student-xs", "train.seed": 0},
    ]
    assert len(points) == 2 + 2 * 2
    no_baseline = expand_grid(grid, base, seeds=2, baseline=False)
    assert len(no_baseline) == 2 * 2 * 2 and all("distill.strategy" not in p for p in no_baseline)


def test_the_baseline_of_a_base_with_untranscribed_audio_drops_it() -> None:
    """A distilling base config that hears untranscribed audio still gets its baseline: the
    point without distillation leaves that audio out (only a teacher can label it)."""
    base = load_config(
        None,
        ["distill.strategy=sequence", "teacher.path=t.safetensors", "data.unlabelled_cuts=u.jsonl"],
    )
    points = expand_grid({"distill.strategy": ["sequence", "hidden"]}, base)
    configs = {p["distill.strategy"]: point_config(base, p) for p in points}
    assert configs["none"].data.unlabelled_cuts == ""
    assert configs["sequence"].data.unlabelled_cuts == "u.jsonl"
    assert configs["hidden"].data.unlabelled_cuts == "u.jsonl"
    spec = make_spec(base, {"distill.strategy": ["sequence"]}, {}, SweepConfig())
    assert [p["distill.strategy"] for p in spec["points"]] == ["none", "sequence"]


def test_relevant_keys() -> None:
    assert not relevant("distill.weight", "none")
    assert not relevant("teacher.cache_topk", "none")
    assert relevant("distill.weight", "logit+hidden")
    assert not relevant("distill.hidden_weight", "logit")
    assert relevant("distill.init_from_teacher", "none")
    assert relevant("distill.weight", "some-future-strategy")  # unknown: never dropped


def test_explicit_seed_dimension() -> None:
    points = expand_grid({"train.seed": [7, 8]}, load_config(None), seeds=1)
    assert points == [{"train.seed": 7}, {"train.seed": 8}]
    with pytest.raises(ConfigError):
        expand_grid({"train.seed": [7, 8]}, load_config(None), seeds=2)


def test_make_spec_validates_every_point() -> None:
    base = load_config(None, ["distill.strategy=logit", "teacher.path=t.safetensors"])
    with pytest.raises(ConfigError, match="distill.weight"):
        make_spec(base, {"distill.weight": [0.5, 1.5]}, {}, SweepConfig())
    with pytest.raises(ConfigError, match="n_trials"):
        make_spec(base, {}, {"distill.weight": (0.0, 0.9, False)}, SweepConfig())


def test_reporter_prunes_only_when_enabled(tmp_path: Path) -> None:
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.5))
    trial = study.ask()
    _reporter(trial, 0, SweepConfig())(10, {"step": 10, "dev_wer": 0.9, "dev_cer": 0.5})
    with pytest.raises(optuna.TrialPruned):
        _reporter(trial, 0, SweepConfig(prune=True))(20, {"step": 20, "dev_wer": 0.9})
    assert trial.study.get_trials()[0].intermediate_values == {10: 0.9, 20: 0.9}


def test_tpe_sweep_runs_n_trials_each_with_every_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The optuna side of a TPE sweep, with training replaced by a quadratic."""
    calls = []

    def fake_run_point(base, point, name, out_dir, sweep_cfg, on_eval, trial):
        calls.append((name, point))
        weight = point.get("distill.weight", 0.0)
        return {"dev_wer": (weight - 0.3) ** 2 + 0.01 * point["train.seed"]}

    monkeypatch.setattr("asrkd.sweep.run_point", fake_run_point)
    base = load_config(None, ["distill.strategy=logit", "teacher.path=t.safetensors"])
    grid, ranges = parse_grid(["distill.weight=0.0:0.9"])
    cfg = SweepConfig(seeds=2, n_trials=4)
    sweep(base, grid, ranges, cfg, tmp_path)
    names = [name for name, _ in calls]
    assert names[:2] == ["baseline-s0", "baseline-s1"]
    assert calls[0][1] == {"distill.strategy": "none", "train.seed": 0}
    assert len(names) == 2 + 4 * 2 and len(set(names)) == len(names)
    sweep(base, grid, ranges, cfg, tmp_path)  # finished: nothing runs again
    assert len(calls) == 10
    study = open_study(make_spec(base, grid, ranges, cfg), cfg, tmp_path)
    assert len(study.trials) == 5
    # jobs=1 runs in this process: it must not end with this process's parent (a shell that
    # exits first, nohup), so the workers' parent watch is not started here
    assert "asrkd-exit-with-parent" not in {t.name for t in threading.enumerate()}


def test_an_orphan_running_trial_does_not_hold_up_a_finished_grid(tmp_path: Path) -> None:
    """A worker killed right after creating its trial (no grid point, no pid yet) leaves it
    RUNNING; once every grid point is complete, workers stop instead of waiting grace_seconds
    (seen: a resumed sweep sat idle for 10 minutes)."""
    base = load_config(None, ["distill.strategy=logit", "teacher.path=t.safetensors"])
    grid, ranges = parse_grid(["distill.weight=0.1,0.5"])
    cfg = SweepConfig(grace_seconds=600)
    spec = make_spec(base, grid, ranges, cfg)
    study = open_study(spec, cfg, tmp_path)
    study._storage.create_new_trial(study._study_id)  # the orphan: RUNNING, no attributes
    n_points = len(spec["points"])
    assert pending(study, spec, cfg) == (n_points, 1)
    points = optuna.distributions.CategoricalDistribution(list(range(n_points)))
    for point in range(n_points):  # every point done by other workers
        done = optuna.trial.create_trial(
            params={"point": point}, distributions={"point": points}, value=0.5
        )
        study.add_trial(done)
    assert pending(study, spec, cfg) == (0, 0)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # study.ask()
def test_a_trial_whose_worker_died_is_retried_at_the_next_heartbeat(tmp_path: Path) -> None:
    """A named trial whose worker process on this machine is gone is failed and retried by the
    next worker look (each heartbeat), not only when a sweep starts: a worker killed while a
    resumed sweep looked (still exiting) or while its siblings worked held its grid point until
    optuna's heartbeat check, grace_seconds later (seen: the kill-and-resume test sat 10 min).
    A live worker's trial is left alone."""
    base = load_config(None, ["distill.strategy=logit", "teacher.path=t.safetensors"])
    grid, ranges = parse_grid(["distill.weight=0.1,0.5"])
    cfg = SweepConfig(grace_seconds=600)
    study = open_study(make_spec(base, grid, ranges, cfg), cfg, tmp_path)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    trials = {}
    for name, pid in (("alive", os.getpid()), ("killed", worker.pid)):
        trial = study.ask()
        for key, value in (("host", socket.gethostname()), ("pid", pid)):
            trial.set_user_attr(key, value)
        trial.set_user_attr("trial_id", trial._trial_id)  # named by its own worker
        trials[name] = trial.number
    assert fail_dead_workers(study, cfg) == 0  # both workers run
    worker.kill()
    worker.wait()
    assert fail_dead_workers(study, cfg) == 1
    state = {t.number: t.state for t in study.trials}
    assert state[trials["killed"]] == optuna.trial.TrialState.FAIL
    assert state[trials["alive"]] == optuna.trial.TrialState.RUNNING
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == trials["killed"]]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.WAITING
    assert fail_dead_workers(study, cfg) == 0  # once


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # study.ask()
def test_an_orphan_holding_a_grid_point_is_retried(sweep_data: dict, tmp_path: Path) -> None:
    """A worker killed between creating its trial and naming itself leaves a RUNNING trial with
    a grid point and no heartbeat, which optuna never calls stale: the sweep fails it after
    3 heartbeats, retries its point and finishes (it used to wait for it forever)."""
    base = base_config(sweep_data, steps=20)
    grid = {"distill.weight": [0.1, 0.5]}  # + the baseline = 3 points
    cfg = SweepConfig(heartbeat_seconds=1, grace_seconds=600)
    study = open_study(make_spec(base, grid, {}, cfg), cfg, tmp_path)
    # like a retry whose new worker died at once: it carries the host and pid of the worker
    # before it (a dead one here), copied with its attributes, and no heartbeat
    orphan = study.ask()  # the grid sampler gives it a point; nobody will run it
    orphan.set_user_attr("host", socket.gethostname())
    orphan.set_user_attr("pid", 2**22 + 1)
    point = trial_point(study, study.trials[orphan.number])
    assert point is not None and "trial_id" not in study.trials[orphan.number].user_attrs
    t0 = time.monotonic()
    sweep(base, grid, {}, cfg, tmp_path)
    rows = read_rows(tmp_path / RESULTS)
    assert sorted(r["name"] for r in rows) == [
        "000-none-s0",
        "001-logit-w0.1-s0",
        "002-logit-w0.5-s0",
    ]
    trials = open_study(make_spec(base, grid, {}, cfg), cfg, tmp_path).trials
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert int(retry[0].params["point"]) == point
    assert time.monotonic() - t0 < 120


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # study.ask()
def test_a_sweep_retries_the_point_of_a_worker_that_dies_while_it_runs(
    sweep_data: dict, tmp_path: Path
) -> None:
    """A trial named by a worker that is still alive when the sweep starts and dies while the
    sweep works: the sweep fails it at a heartbeat, retries its point and finishes, instead of
    waiting grace_seconds (600 s here) for optuna's heartbeat check."""
    base = base_config(sweep_data, steps=20)
    grid = {"distill.weight": [0.1, 0.5]}  # + the baseline = 3 points
    cfg = SweepConfig(heartbeat_seconds=1, grace_seconds=600)
    study = open_study(make_spec(base, grid, {}, cfg), cfg, tmp_path)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    held = study.ask()  # the grid sampler gives it a point; its worker dies in 3 s
    for key, value in (("host", socket.gethostname()), ("pid", worker.pid)):
        held.set_user_attr(key, value)
    held.set_user_attr("trial_id", held._trial_id)
    point = trial_point(study, study.trials[held.number])
    t0 = time.monotonic()
    reaper = threading.Thread(target=worker.wait)  # reaped as soon as it exits, as init would
    reaper.start()
    sweep(base, grid, {}, cfg, tmp_path)
    reaper.join()
    rows = read_rows(tmp_path / RESULTS)
    assert len(rows) == 3 and {r["state"] for r in rows} == {"COMPLETE"}
    trials = open_study(make_spec(base, grid, {}, cfg), cfg, tmp_path).trials
    assert trials[held.number].state == optuna.trial.TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == held.number]
    assert len(retry) == 1 and int(retry[0].params["point"]) == point
    assert time.monotonic() - t0 < 120


# ---------------------------------------------------------------------------------------------
# A real sweep: killed during its second trial, then resumed.


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"sweep exited early ({proc.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the sweep")
        time.sleep(0.1)


def _killed_mid_trial(out: Path) -> bool:
    """A row is written and a trial without a row has a checkpoint."""
    done = {r["name"] for r in read_rows(out / RESULTS)}
    return bool(done) and any(
        any((d / "checkpoints").glob("step-*.safetensors"))
        for d in (out / "trials").iterdir()
        if d.name not in done
    )


@pytest.mark.slow
def test_sweep_killed_and_resumed_runs_each_trial_once(sweep_data: dict, tmp_path: Path) -> None:
    base = base_config(sweep_data, steps=20)
    grid = {"distill.weight": [0.1, 0.5]}  # + the baseline = 3 trials
    cfg = SweepConfig(jobs=2, heartbeat_seconds=1, grace_seconds=600)
    out = tmp_path / "sweep"
    code = (
        "import pickle, sys; from asrkd.sweep import sweep; "
        "sweep(*pickle.loads(bytes.fromhex(sys.argv[1])))"
    )
    import pickle

    args = pickle.dumps((base, grid, {}, cfg, out)).hex()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen([sys.executable, "-c", code, args], env=env, start_new_session=True)
    try:
        _wait_for(lambda: (out / "trials").is_dir() and _killed_mid_trial(out), 240, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, like a lost machine
        proc.wait()
    rows_before = read_rows(out / RESULTS)
    assert 1 <= len(rows_before) < 3

    # grace_seconds=600: only the dead-worker check can free the killed trial in time
    sweep(base, grid, {}, SweepConfig(jobs=1, heartbeat_seconds=1, grace_seconds=600), out)
    rows = read_rows(out / RESULTS)
    assert rows[: len(rows_before)] == rows_before
    assert sorted(r["name"] for r in rows) == [
        "000-none-s0",
        "001-logit-w0.1-s0",
        "002-logit-w0.5-s0",
    ]
    assert all(r["state"] == "COMPLETE" and r["steps"] == 20 for r in rows)
    assert len(list((out / "trials").iterdir())) == 3
    assert rows[0]["latency_ms"] is not None and all(r["latency_ms"] for r in rows)
    # one preset, one decoder: measured by the trials that ran before any row said so (two
    # workers at first), reused by the rest
    assert len({r["cost_from"] for r in rows}) < len(rows)
    assert {r["cost_key"] for r in rows} == {f"tiny|greedy|memory-probe-{MEMORY_PROBE}"}

    spec = make_spec(base, grid, {}, cfg)
    study = open_study(spec, cfg, out)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    n_trials = len(study.trials)
    sweep(base, grid, {}, SweepConfig(heartbeat_seconds=1, grace_seconds=600), out)
    assert len(read_rows(out / RESULTS)) == 3 and len(study.trials) == n_trials
    text = report(out).read_text()  # from the recorded rows of a real sweep
    assert "Best overall" in text and text.count("| [0") == 3
