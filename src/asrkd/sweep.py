"""Hyperparameter sweeps: an Optuna study whose trials are training runs.

A sweep folder holds::

    study.db          the Optuna study (SQLite) unless `--storage` names a shared database
    sweep.json        the grid or ranges, the expanded grid points and the sweep options
    config.yaml       the base config every trial overrides
    results.jsonl     one row per finished run: settings, dev/test WER/CER, size, speed, state
    trials/NAME/      each run's folder (see asrkd.training), with eval/ from asrkd.evaluation

A grid (``--grid key=v1,v2,...``) is expanded by asrkd.sweep_grid, seeds included as the `train.seed` dimension
and settings that a point's strategy does not read dropped, so the no-distillation baseline runs
once per seed, not once per weight x temperature. Optuna's GridSampler hands out the points by
index. Ranges (``--grid key=lo:hi``) switch to TPE for `n_trials` trials, each running all seeds.
Finished trials are never rerun; a trial whose worker died is failed (at once when the worker ran
on this machine, else after `grace_seconds` without heartbeat) and retried, resuming its run from
the last checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pickle
import shutil
import socket
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from asrkd.config import Config, ConfigError, SweepConfig, replace, save_config, to_dict
from asrkd.processes import process_alive
from asrkd.sweep_grid import (
    SEED_KEY,
    STRATEGY_KEY,
    Point,
    flat_config,
    make_spec,
    point_config,
    point_name,
    relevant,
)

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
# Settings every results row carries (None where the run's strategy ignores them).
ROW_KEYS = (STRATEGY_KEY, "distill.weight", "distill.temperature", "model.preset", SEED_KEY)
COST_KEYS = ("latency_ms", "rtf", "model_memory_mb", "peak_rss_mb")


class SweepError(RuntimeError):
    """Some trials of a sweep failed (their rows in results.jsonl say why)."""


# ---------------------------------------------------------------------------------------------
# The grid: parsing and expansion.


def storage_url(sweep_cfg: SweepConfig, out_dir: str | Path) -> str:
    return sweep_cfg.storage or f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


def _retry_callback(sweep_cfg: SweepConfig) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Queues a failed trial again (same params, user attrs and grid point), max_retries times."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental / deprecated-name warnings
        return (cls or optuna.storages.RetryFailedTrialCallback)(max_retry=sweep_cfg.max_retries)


def open_storage(url: str, sweep_cfg: SweepConfig) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats: a RUNNING trial silent for grace_seconds is stale."""
    from sqlalchemy.exc import NoSuchModuleError

    if url.startswith("sqlite"):
        engine_kwargs: dict = {"connect_args": {"timeout": 300}}  # workers share one file
    else:
        engine_kwargs = {"pool_pre_ping": True}
    new_api = hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
    callback_arg = "heartbeat_stale_trial_callback" if new_api else "failed_trial_callback"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=sweep_cfg.heartbeat_seconds,
                grace_period=sweep_cfg.grace_seconds,
                **{callback_arg: _retry_callback(sweep_cfg)},
            )
        except (ImportError, NoSuchModuleError) as err:  # optuna hides the missing driver
            scheme = url.split(":", 1)[0]
            if scheme in ("postgresql", "postgresql+psycopg"):
                hint = "pip install 'asrkd[postgres]' (psycopg 3 and SQLAlchemy >= 2.1)"
            elif scheme == "postgres":
                hint = "PostgreSQL URLs begin postgresql://"
            else:
                hint = "install the database driver the URL names"
            cause = err.__cause__ or err.__context__ or err
            raise ConfigError(f"sweep.storage {_safe(url)}: {cause}; {hint}") from err


def _safe(url: str) -> str:
    """A database URL without its password (user:***@, or ?password=***), for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url.split("://", 1)[0] + "://..."
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def open_study(spec: dict, sweep_cfg: SweepConfig, out_dir: str | Path) -> optuna.Study:
    """Create or load the study (every worker and machine opens it the same way)."""
    storage = open_storage(storage_url(sweep_cfg, out_dir), sweep_cfg)
    if spec["mode"] == "grid":
        # the same seed everywhere, as optuna asks for distributed grid search
        sampler: optuna.samplers.BaseSampler = optuna.samplers.GridSampler(
            {"point": list(range(len(spec["points"])))}, seed=0
        )
    else:
        sampler = optuna.samplers.TPESampler(
            n_startup_trials=min(10, max(2, sweep_cfg.n_trials // 3))
        )
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if sweep_cfg.prune:
        pruner = optuna.pruners.MedianPruner(
            sweep_cfg.prune_startup_trials, sweep_cfg.prune_warmup_steps
        )
    return optuna.create_study(
        storage=storage,
        study_name=sweep_cfg.study_name,
        sampler=sampler,
        pruner=pruner,
        direction="minimize",
        load_if_exists=True,
    )


def _claim_spec(study: optuna.Study, spec: dict) -> None:
    """Record what a new study searches; refuse to join a study that searches something else."""
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", spec)
        if spec["mode"] == "tpe" and spec["baseline"]:
            study.enqueue_trial({}, user_attrs={"baseline": True})
    elif json.dumps(stored, sort_keys=True) != json.dumps(spec, sort_keys=True):
        raise ConfigError(
            f"study {study.study_name!r} was created with another grid or other seeds: "
            "use another --out, --storage or study name"
        )


def recover(study: optuna.Study, sweep_cfg: SweepConfig, local: bool) -> int:
    """Before workers start: fail stale trials and, when the storage is local (SQLite), RUNNING
    trials whose worker process on this machine is gone; then queue a retry of each failed
    trial that has none yet. Returns the number of retries queued."""
    n_waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)  # queues their retries itself
    if local:
        fail_dead_workers(study, sweep_cfg)
    trials = study.get_trials(deepcopy=True)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    callback = _retry_callback(sweep_cfg)
    for t in trials:
        if t.state == TrialState.FAIL and t.number not in retried:
            callback(study, t)  # does nothing past max_retries
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - n_waiting


def fail_dead_workers(study: optuna.Study, sweep_cfg: SweepConfig) -> int:
    """Fail, and queue one retry of, each RUNNING trial whose worker was a process of this
    machine that is gone (killed, out of memory): for a local (SQLite) study only, whose workers
    all run here. recover() looks once before the workers start, and every worker at each
    heartbeat: a worker killed a moment before a resumed sweep looked (still exiting, its pid
    alive) or while its siblings work had its trial held until optuna's heartbeat check
    (grace_seconds, 600 s by default) gave it back. Returns the number of trials failed."""
    host, n_failed = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if not _owned(t) or t.user_attrs.get("host") != host or process_alive(pid):
            continue
        n_failed += _fail_and_retry(study, t, sweep_cfg, f"(pid {pid}) is gone")
    return n_failed


def _fail_and_retry(study: optuna.Study, t: FrozenTrial, sweep_cfg: SweepConfig, why: str) -> bool:
    """Fail the RUNNING trial t, whose worker `why`, and queue its retry; False where it had
    finished meanwhile or another worker failed it first (and queued the retry)."""
    try:
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    log.warning("trial %d: its worker %s; retrying it", t.number, why)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _retry_callback(sweep_cfg)(study, study._storage.get_trial(t._trial_id))
    return True


def _owned(t: FrozenTrial) -> bool:
    """Whether the host and pid a trial names are its own worker's: a retry is created with a
    copy of the failed trial's attributes, the dead worker's included, until its new worker
    names itself (Objective.__call__, first thing)."""
    return t.user_attrs.get("trial_id") == t._trial_id


class OrphanWatch:
    """Fails, and queues one retry of, each RUNNING trial whose worker died between creating it
    and naming itself (no attributes of its own yet, no heartbeat): optuna's heartbeat check never
    fails a trial without a heartbeat, and such a trial may hold a grid point, so without this a
    resumed grid waited for it forever. A live worker names itself and records a heartbeat within
    milliseconds of creating its trial; a trial seen unnamed by this worker for 3 heartbeats
    (SQLite: one machine) or grace_seconds (a shared database) is taken as orphaned. Timed with
    this process's own clock: no comparison with the clocks or time zones of other machines."""

    def __init__(self, sweep_cfg: SweepConfig, local: bool) -> None:
        self.sweep_cfg = sweep_cfg
        self.limit = 3 * sweep_cfg.heartbeat_seconds if local else sweep_cfg.grace_seconds
        self.first_seen: dict[int, float] = {}

    def fail_overdue(self, study: optuna.Study) -> int:
        """One look at the study; returns the number of trials failed here."""
        now = time.monotonic()
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        unnamed = [t for t in running if not _owned(t)]
        self.first_seen = {t._trial_id: self.first_seen.get(t._trial_id, now) for t in unnamed}
        n_failed = 0
        for t in unnamed:
            if now - self.first_seen[t._trial_id] < self.limit:
                continue
            n_failed += _fail_and_retry(study, t, self.sweep_cfg, "died before it started")
        return n_failed


def trial_point(study: optuna.Study, t: FrozenTrial) -> int | None:
    """The grid point a trial runs, known from its grid id before it has suggested it."""
    if "point" in t.params:
        return int(t.params["point"])
    grid_id = t.system_attrs.get("grid_id")
    if grid_id is None or not isinstance(study.sampler, optuna.samplers.GridSampler):
        return None
    return int(study.sampler._all_grids[grid_id][0])


def pending(study: optuna.Study, spec: dict, sweep_cfg: SweepConfig) -> tuple[int, int]:
    """(trials a worker could start now, trials running)."""
    trials = study.get_trials(deepcopy=False)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    if spec["mode"] == "grid":
        claimed = {trial_point(study, t) for t in trials} - {None}
        fresh = len(spec["points"]) - len(claimed)
        # A worker killed between creating its trial and taking a grid point leaves a RUNNING
        # trial that names neither a point nor a pid: once every point is done, nothing running
        # can add work, so no worker waits grace_seconds for it.
        done = {trial_point(study, t) for t in trials if t.state == TrialState.COMPLETE}
        if len(done - {None}) >= len(spec["points"]):
            running = 0
    else:
        origins = {
            t.system_attrs.get("failed_trial", t.number)
            for t in trials
            if not t.user_attrs.get("baseline") and "duplicate_of" not in t.user_attrs
        }
        fresh = max(0, sweep_cfg.n_trials - len(origins))
    return waiting + fresh, running


def work(
    base: Config, spec: dict, sweep_cfg: SweepConfig, out_dir: str | Path, threads: int = 0
) -> None:
    """One worker: run trials until none is left to start, waiting while others run (they may
    die, go stale and come back as retries)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    study = open_study(spec, sweep_cfg, out_dir)
    objective = Objective(base, spec, sweep_cfg, Path(out_dir))
    local = storage_url(sweep_cfg, out_dir).startswith("sqlite")
    orphans = OrphanWatch(sweep_cfg, local)
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        orphans.fail_overdue(study)
        if local:
            fail_dead_workers(study, sweep_cfg)
        startable, running = pending(study, spec, sweep_cfg)
        if startable:
            study.optimize(objective, n_trials=1, catch=(Exception,))
        elif running:
            time.sleep(sweep_cfg.heartbeat_seconds)
        else:
            return


# ---------------------------------------------------------------------------------------------
# Trials: each runs one training run per seed it covers and records a row per run.


class Objective:
    """Optuna objective: the mean `metric` (dev WER or CER) over the trial's runs."""

    def __init__(self, base: Config, spec: dict, sweep_cfg: SweepConfig, out_dir: Path) -> None:
        self.base, self.spec, self.sweep_cfg, self.out_dir = base, spec, sweep_cfg, out_dir

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("trial_id", trial._trial_id)  # the host and pid are this trial's
        runs = self.grid_runs(trial) if self.spec["mode"] == "grid" else self.tpe_runs(trial)
        if not runs:
            raise optuna.TrialPruned("another trial holds this grid point")
        values = []
        for i, (name, point) in enumerate(runs):
            step_offset = i * self.base.train.max_steps  # runs of one trial report in sequence
            row = run_point(
                self.base,
                point,
                name,
                self.out_dir,
                self.sweep_cfg,
                _reporter(trial, step_offset, self.sweep_cfg),
                trial.number,
            )
            values.append(row[self.sweep_cfg.metric])
        return statistics.fmean(values)

    def grid_runs(self, trial: optuna.Trial) -> list[tuple[str, Point]]:
        points = self.spec["points"]
        index = trial.suggest_categorical("point", list(range(len(points))))
        holder = _holder(trial, index)
        if holder is not None:
            trial.set_user_attr("duplicate_of", holder)
            return []
        return [(point_name(index, points[index]), points[index])]

    def tpe_runs(self, trial: optuna.Trial) -> list[tuple[str, Point]]:
        frozen = _frozen(trial)
        if trial.user_attrs.get("baseline"):
            params: Point = {STRATEGY_KEY: "none"}
            prefix = "baseline"
        else:
            params = {k: trial.suggest_categorical(k, v) for k, v in self.spec["grid"].items()}
            for key, r in self.spec["ranges"].items():
                suggest = trial.suggest_int if r["int"] else trial.suggest_float
                params[key] = suggest(key, r["low"], r["high"], log=r["log"])
            prefix = f"trial-{frozen.system_attrs.get('failed_trial', trial.number):04d}"
        strategy = str(params.get(STRATEGY_KEY, self.base.distill.strategy))
        params = {k: v for k, v in params.items() if relevant(k, strategy)}
        return [(f"{prefix}-s{seed}", {**params, SEED_KEY: seed}) for seed in self.spec["seeds"]]


def _frozen(trial: optuna.Trial) -> FrozenTrial:
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)


def _holder(trial: optuna.Trial, index: int) -> int | None:
    """The number of another trial that finished or runs grid point `index` and started before
    this one (a total order every worker agrees on: at most one of two racers runs it)."""
    study = trial.study
    me = _frozen(trial)
    for t in study.get_trials(deepcopy=False):
        if t.number == me.number or trial_point(study, t) != index:
            continue
        if "duplicate_of" in t.user_attrs:
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            return t.number
        if t.state == TrialState.RUNNING and (t.datetime_start, t.number) < (
            me.datetime_start,
            me.number,
        ):
            return t.number
    return None


def _reporter(
    trial: optuna.Trial, step_offset: int, sweep_cfg: SweepConfig
) -> Callable[[int, dict], None]:
    """`train`'s on_eval: report the dev metric to optuna; prune when enabled and hopeless."""

    def on_eval(step: int, row: dict) -> None:
        trial.report(row[sweep_cfg.metric], step_offset + step)
        if sweep_cfg.prune and trial.should_prune():
            raise optuna.TrialPruned(f"{sweep_cfg.metric}={row[sweep_cfg.metric]:.4f} at {step}")

    return on_eval


def set_name(cuts_path: str | Path) -> str:
    """The name asrkd.evaluation gives a cut manifest's results: cuts_dev.jsonl.gz -> dev."""
    return Path(cuts_path).name.split(".")[0].removeprefix("cuts_")


def run_point(
    base: Config,
    point: Point,
    name: str,
    out_dir: Path,
    sweep_cfg: SweepConfig,
    on_eval: Callable[[int, dict], None] | None = None,
    trial: int = -1,
) -> dict:
    """Train (or finish training) one grid point in out_dir/trials/NAME, evaluate it on the dev
    and test sets and append its row to results.jsonl (also when pruned or failed)."""
    run_dir = out_dir / "trials" / name
    finished = [r for r in read_rows(out_dir / RESULTS) if r["name"] == name]
    if finished and finished[-1]["state"] == "COMPLETE":  # its worker died before telling optuna
        return finished[-1]
    cfg = replace(point_config(base, point), [f"train.out_dir={run_dir}"])
    row = _row_head(cfg, point, name, trial)
    t0 = time.perf_counter()
    try:
        if not (run_dir / "summary.json").is_file():  # else trained already, died in evaluation
            _train(cfg, run_dir, on_eval)
        row.update(_evaluate_run(cfg, run_dir, out_dir, sweep_cfg))
        row["state"] = "COMPLETE"
    except optuna.TrialPruned:
        row.update(state="PRUNED", **_best_so_far(run_dir))
        raise
    except Exception as err:
        row.update(state="FAIL", error=f"{type(err).__name__}: {err}")
        raise
    finally:  # no row for KeyboardInterrupt: that trial is resumed, not finished
        if row["state"] is not None:
            row["wall_seconds"] = time.perf_counter() - t0
            append_row(out_dir / RESULTS, row)
    return row


def _train(cfg: Config, run_dir: Path, on_eval: Callable[[int, dict], None] | None) -> None:
    from asrkd.training import train  # lazy: parsing a grid needs no torch

    resume = any((run_dir / "checkpoints").glob("step-*.safetensors"))
    if not resume:  # a previous attempt died before its first checkpoint: start clean
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    train(cfg, resume=resume, on_eval=on_eval)


def _row_head(cfg: Config, point: Point, name: str, trial: int) -> dict:
    flat = flat_config(to_dict(cfg))
    strategy = cfg.distill.strategy
    keys = list(dict.fromkeys([*ROW_KEYS, *point]))
    params = {k: flat.get(k) if relevant(k, strategy) else None for k in keys}
    return {
        "name": name,
        "trial": trial,
        "state": None,
        "params": params,
        "run_dir": f"trials/{name}",
        "error": None,
    }


def _evaluate_run(cfg: Config, run_dir: Path, out_dir: Path, sweep_cfg: SweepConfig) -> dict:
    from asrkd.evaluation import evaluate

    summary = json.loads((run_dir / "summary.json").read_text())
    cost_key = _cost_key(cfg)
    cost = _cost_of(out_dir, cost_key) if sweep_cfg.measure == "preset" else None
    measure = sweep_cfg.measure == "all" or (sweep_cfg.measure == "preset" and cost is None)
    sets = [cfg.data.dev_cuts, *cfg.data.test_cuts]
    result = evaluate(run_dir / "model.safetensors", sets, run_dir / "eval", cfg.eval, measure)
    dev = result["sets"][set_name(cfg.data.dev_cuts)]
    test = result["sets"][set_name(cfg.data.test_cuts[0])] if cfg.data.test_cuts else {}
    if measure:
        cost = {**result["speed"], **result["memory"], "cost_from": run_dir.name,
                "cost_key": cost_key}  # fmt: skip
    cost = {k: (cost or {}).get(k) for k in (*COST_KEYS, "cost_from", "cost_key")}
    return {
        "dev_wer": dev["wer"],
        "dev_cer": dev["cer"],
        "test_wer": test.get("wer"),
        "test_cer": test.get("cer"),
        "sets": {k: {"wer": v["wer"], "cer": v["cer"]} for k, v in result["sets"].items()},
        "n_params": result["n_params"],
        "bytes_on_disk": result["bytes_on_disk"],
        **cost,
        "steps": summary["steps"],
        "best_step": summary["best_step"],
        "train_seconds": summary["train_seconds"],
    }


def _best_so_far(run_dir: Path) -> dict:
    """dev WER/CER of the best evaluation a pruned run reached."""
    evals = [r for r in read_rows(run_dir / "metrics.jsonl") if "dev_wer" in r]
    best = min(evals, key=lambda r: r["dev_wer"], default={})
    return {
        "dev_wer": best.get("dev_wer"),
        "dev_cer": best.get("dev_cer"),
        "steps": evals[-1]["step"] if evals else 0,
        "best_step": best.get("step"),
    }


def _cost_key(cfg: Config) -> str:
    """What a trial's latency and memory depend on: the model preset, the decoder (both are
    in the RTF and the peak) and how memory is probed."""
    from asrkd.evaluation import MEMORY_PROBE

    return f"{cfg.model.preset}|{cfg.eval.tag}|memory-probe-{MEMORY_PROBE}"


def _cost_of(out_dir: Path, cost_key: str) -> dict | None:
    """The latency/memory an earlier trial of this sweep measured under the same _cost_key
    (rows from before the key was stored are measured again)."""
    for row in reversed(read_rows(out_dir / RESULTS)):
        if row.get("cost_key") == cost_key and row.get("latency_ms") is not None:
            return row
    return None


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict) -> None:
    """Append one JSON line; a lock keeps rows of concurrent workers whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# The entry point.


def sweep(
    base: Config,
    grid: dict[str, list],
    ranges: dict[str, tuple],
    sweep_cfg: SweepConfig,
    out_dir: str | Path,
) -> Path:
    """Run (or resume) a sweep into out_dir and return it; see the module docstring.

    `grid` and `ranges` come from parse_grid. Raises SweepError when trials failed (after
    running all others); running the same sweep again retries them and skips finished ones.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = make_spec(base, grid, ranges, sweep_cfg)
    study = open_study(spec, sweep_cfg, out)
    _claim_spec(study, spec)
    n_retries = recover(study, sweep_cfg, storage_url(sweep_cfg, out).startswith("sqlite"))
    if n_retries:
        log.info("retrying %d trial(s) that failed or whose worker died", n_retries)
    save_config(base, out / "config.yaml")
    (out / "sweep.json").write_text(
        json.dumps(
            {
                "sweep": to_dict(sweep_cfg),
                "grid": grid,
                "ranges": {k: list(v) for k, v in ranges.items()},
                "spec": spec,
            },
            indent=1,
        )
    )
    if sweep_cfg.jobs == 1:
        work(base, spec, sweep_cfg, out)
    else:
        _warm_teacher_caches(base, spec, out)
        _run_workers(base, spec, sweep_cfg, out)
    failed = failed_trials(study)
    if failed:
        raise SweepError(
            f"{len(failed)} trial(s) failed: {failed}; see {out / RESULTS}. "
            "Run the sweep again to retry them."
        )
    return out


def _run_workers(base: Config, spec: dict, sweep_cfg: SweepConfig, out: Path) -> None:
    """`jobs` worker processes sharing the study; torch threads split between them. Workers are
    fresh interpreters that import only asrkd (multiprocessing's spawn would re-run the caller's
    script in each worker unless it had an ``if __name__ == "__main__"`` guard)."""
    n_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (n_cpus or 1) // sweep_cfg.jobs)
    payload = pickle.dumps((base, spec, sweep_cfg, out, threads))
    # a worker exits when this process is gone (killed: its trials come back as retries). Not
    # in work() itself: with jobs=1 that runs in this process, whose own parent (a shell) may
    # end first without stopping the sweep.
    code = (
        "import pickle, sys; from asrkd.processes import exit_with_parent; exit_with_parent(); "
        "from asrkd.sweep import work; work(*pickle.load(sys.stdin.buffer))"
    )
    src = str(Path(__file__).resolve().parents[1])  # asrkd importable however we were started
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    procs = []
    try:
        for _ in range(sweep_cfg.jobs):
            proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, env=env)
            proc.stdin.write(payload)
            proc.stdin.close()
            procs.append(proc)
        codes = [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
    bad = [c for c in codes if c != 0]
    if bad:
        raise SweepError(f"{len(bad)} sweep worker(s) exited with codes {bad}")


def _warm_teacher_caches(base: Config, spec: dict, out: Path) -> None:
    """Build each teacher-output cache the trials need once, here, so that parallel workers
    reuse it instead of racing to build it."""
    from asrkd.training import Trainer  # its constructor builds (or finds) the caches

    if spec["mode"] == "grid":
        cfgs = [point_config(base, p) for p in spec["points"]]
    else:
        strategies = spec["grid"].get(STRATEGY_KEY, [base.distill.strategy])
        cfgs = [point_config(base, {STRATEGY_KEY: s}) for s in strategies]
    seen = set()
    for cfg in cfgs:
        key = json.dumps(
            [
                to_dict(cfg.teacher),
                cfg.distill.strategy,
                cfg.model.preset,
                cfg.distill.hidden_layer_map,
                cfg.data.train_cuts,
                cfg.data.unlabelled_cuts,
            ]
        )
        if cfg.distill.strategies == ("none",) or not cfg.teacher.cache or key in seen:
            continue
        seen.add(key)
        tmp = out / ".cache-warmup"
        shutil.rmtree(tmp, ignore_errors=True)
        Trainer(replace(cfg, [f"train.out_dir={tmp}"]))
        shutil.rmtree(tmp, ignore_errors=True)


def failed_trials(study: optuna.Study) -> list[int]:
    """Numbers of trials that failed and were not retried successfully."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t.number for t in trials if t.state == TrialState.FAIL and t.number not in retried]
