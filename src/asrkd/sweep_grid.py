"""Sweep grids: `--grid` parsing, expansion into points (seeds included, settings a point's
strategy does not read dropped) and the sweep spec stored in sweep.json. Pure functions of the
command line and the base config; asrkd.sweep runs the points."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import yaml

from asrkd.config import Config, ConfigError, SweepConfig, replace, to_dict

STRATEGY_KEY = "distill.strategy"
SEED_KEY = "train.seed"
# The settings each strategy reads: a swept key that no strategy of a grid point reads is dropped
# from that point. Strategies missing here keep every key (no dedup, never a wrong one).
STRATEGY_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "logit": ("distill.weight", "distill.temperature"),
    "sequence": ("distill.sequence_weight",),
    "hidden": ("distill.hidden_weight", "distill.hidden_layer_map"),
}
KD_ONLY_KEYS = ("teacher.cache", "teacher.cache_topk", "teacher.cache_dir", "data.unlabelled_cuts")
_RANGE = re.compile(
    r"^\s*([-+]?[0-9.]+(?:e[-+]?\d+)?)\s*:\s*([-+]?[0-9.]+(?:e[-+]?\d+)?)"
    r"\s*(:log)?\s*$",
    re.IGNORECASE,
)

Point = dict[str, Any]  # config key -> value


def parse_grid(items: list[str]) -> tuple[dict[str, list], dict[str, tuple]]:
    """``["distill.weight=0,0.1", "distill.temperature=1:4", "train.lr=1e-4:1e-2:log"]`` ->
    (grid {key: [values]}, ranges {key: (lo, hi, log)}). Values are YAML scalars; ``lo:hi``
    (numbers, with an optional ``:log``) is a range searched by TPE (ints for int settings)."""
    grid: dict[str, list] = {}
    ranges: dict[str, tuple] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(f"--grid {item!r} is not of the form section.key=v1,v2 or =lo:hi")
        if key in grid or key in ranges:
            raise ConfigError(f"--grid names {key} twice")
        match = _RANGE.match(raw)
        if match:
            lo, hi = (_scalar(v) for v in match.group(1, 2))
            if not lo < hi:
                raise ConfigError(f"--grid {item!r}: range needs low < high")
            ranges[key] = (lo, hi, bool(match.group(3)))
        else:
            grid[key] = [_scalar(v) for v in raw.split(",")]
    return grid, ranges


def _scalar(raw: str) -> Any:
    """A YAML scalar, except that YAML 1.1's strings like ``1e-3`` become numbers."""
    value = yaml.safe_load(raw.strip())
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def relevant(key: str, strategy: str) -> bool:
    """Whether a run with this (possibly '+'-joined) strategy reads config `key`."""
    names = strategy.split("+")
    if any(name not in STRATEGY_KEYS for name in names):
        return True
    if key in KD_ONLY_KEYS:
        return names != ["none"]
    used = {k for name in names for k in STRATEGY_KEYS[name]}
    known = {k for keys in STRATEGY_KEYS.values() for k in keys}
    return key not in known or key in used


def expand_grid(
    grid: dict[str, list], base: Config, seeds: int = 1, baseline: bool = True
) -> list[Point]:
    """Every grid point as {key: value}, seed last, in a stable order.

    With `baseline`, distill.strategy=none joins the strategies when a distilling one is swept
    (or set in `base`); keys a point's strategy ignores are dropped and equal points merged, so
    the baseline runs once per seed (and per value of the keys it does read, e.g. model.preset).
    """
    grid = dict(grid)
    base_strategy = base.distill.strategy
    strategies = grid.get(STRATEGY_KEY, [base_strategy])
    if baseline and "none" not in strategies:
        grid[STRATEGY_KEY] = ["none", *strategies]
    if SEED_KEY in grid:
        if seeds != 1:
            raise ConfigError("give either --seeds or --grid train.seed=..., not both")
    else:
        grid[SEED_KEY] = [base.train.seed + i for i in range(seeds)]
    keys = [STRATEGY_KEY, *grid] if STRATEGY_KEY in grid else list(grid)  # strategy first
    keys = [k for k in dict.fromkeys(keys) if k != SEED_KEY] + [SEED_KEY]
    points: list[Point] = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        strategy = str(point.get(STRATEGY_KEY, base_strategy))
        point = {k: v for k, v in point.items() if relevant(k, strategy)}
        if point not in points:
            points.append(point)
    return points


def point_overrides(point: Point) -> list[str]:
    """``key=value`` overrides for asrkd.config.replace (values written as YAML/JSON)."""
    return [f"{k}={json.dumps(v)}" for k, v in point.items()]


def point_config(base: Config, point: Point) -> Config:
    """`base` with the point's settings; a point that does not distil also drops the base's
    untranscribed audio (only a teacher can label it), so a distilling base config still has its
    no-distillation baseline."""
    overrides = point_overrides(point)
    strategy = str(point.get(STRATEGY_KEY, base.distill.strategy))
    if base.data.unlabelled_cuts and not relevant("data.unlabelled_cuts", strategy):
        overrides.append('data.unlabelled_cuts=""')
    return replace(base, overrides)


def point_name(index: int, point: Point) -> str:
    """A readable, file-system-safe run folder name, e.g. ``003-logit-w0.1-T2-s0``."""
    short = {
        STRATEGY_KEY: "",
        "distill.weight": "w",
        "distill.temperature": "T",
        SEED_KEY: "s",
        "model.preset": "",
    }
    parts = [f"{short.get(k, k.rsplit('.', 1)[-1] + '=')}{v}" for k, v in point.items()]
    name = re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join([f"{index:03d}", *parts]))
    return name[:120]


def make_spec(
    base: Config, grid: dict[str, list], ranges: dict[str, tuple], sweep_cfg: SweepConfig
) -> dict:
    """What the study searches (JSON-able), every trial config validated up front."""
    if not ranges:
        points = expand_grid(grid, base, sweep_cfg.seeds, sweep_cfg.baseline)
        for point in points:
            point_config(base, point)  # a bad value fails now, not mid-sweep
        return {"mode": "grid", "points": points}
    if sweep_cfg.n_trials < 1:
        raise ConfigError(
            "a range (--grid key=lo:hi) needs sweep.n_trials >= 1 (--sweep-set n_trials=N)"
        )
    if SEED_KEY in grid or SEED_KEY in ranges:
        raise ConfigError("with ranges, set the number of seeds with --seeds")
    seeds = [base.train.seed + i for i in range(sweep_cfg.seeds)]
    for key, values in grid.items():
        for value in values:
            point_config(base, {key: value})
    flat = flat_config(to_dict(base))
    spec_ranges = {}
    for key, (lo, hi, log_scale) in ranges.items():
        point_config(base, {key: lo})
        point_config(base, {key: hi})
        is_int = isinstance(flat.get(key), int) and not isinstance(flat.get(key), bool)
        spec_ranges[key] = {"low": lo, "high": hi, "log": log_scale, "int": is_int}
    distilling = any(s != "none" for s in grid.get(STRATEGY_KEY, [base.distill.strategy]))
    return {
        "mode": "tpe",
        "grid": grid,
        "ranges": spec_ranges,
        "seeds": seeds,
        "baseline": sweep_cfg.baseline and distilling,
    }


def flat_config(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


# ---------------------------------------------------------------------------------------------
# The study: storage, recovery of dead trials, workers.
