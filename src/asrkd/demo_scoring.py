"""Scoring every row of `asrkd demo`: its students, teachers and teacher runtimes on the test
sets, in parallel processes where asked, and the comparisons between rows."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from asrkd.config import DemoConfig, EvalConfig, to_dict
from asrkd.distill.pseudo_labels import LEFT_OUT_FILE, REASONS
from asrkd.files import code_fingerprint

T = TypeVar("T")


def code_stamp() -> str:
    """The fingerprint of asrkd's source (asrkd.files.code_fingerprint) that every stage's stamp
    after training and the report carry: other code, every row measured again. One name, read
    at call time by demo.py, the report and the teacher runtimes alike."""
    return code_fingerprint()


def evaluate_runs(
    specs,
    out: Path,
    data: dict[str, Path],
    cfg: DemoConfig,
    delivered: tuple | None = None,
    dev_wer: dict[str, float] | None = None,
) -> list[dict]:
    """Evaluate every run's best-on-dev model on the test speakers, and the delivered int8
    file (a (RunSpec, path) pair from demo.deliver_int8) if any; one row per model. A row's
    dev WER is dev_wer's (demo.dev_wers: decoded as the test set is) where it has one, else the
    training run's best (greedy)."""
    from asrkd.evaluation import write_summary
    from asrkd.scoring import hyps_path
    from asrkd.teacher_eval import time_teacher

    dev_wer = dev_wer or {}

    tests = [data["test"], *([data["test_noisy"]] if "test_noisy" in data else [])]
    models = [(spec, spec.name, out / "runs" / spec.name / "model.safetensors") for spec in specs]
    runtimes = {}  # runtime -> an external teacher's summary
    if cfg.external_teacher:  # scored by its own runtimes below, not as an asrkd model file
        teacher_spec = models.pop(0)[0]
        # the noisy set with the first runtime only: the same weights, and the others are slow
        runtimes = {
            runtime: evaluate_teacher_runtime(cfg, runtime, tests if i == 0 else tests[:1], out)
            for i, runtime in enumerate(cfg.teacher_runtimes)
        }
    if delivered is not None:
        spec, path = delivered
        models.append((spec, f"{spec.name}-int8", path))
    score_cfg = scoring_config(cfg)  # the timing below uses cfg.eval's threads
    jobs = [(model, tests, out / "eval" / n, score_cfg, cfg.eval) for _, n, model in models]
    summaries = in_processes(_score, jobs, cfg.parallel_runs)
    rows = []
    # Every model is timed here, in this run, one after another after all the scoring: the
    # speed ratios compare times taken minutes apart, never a teacher's time reused from an
    # earlier run (its WER is reused while its inputs are unchanged; its time is not).
    for runtime, summary in runtimes.items():
        speed = in_fresh_process(time_teacher, cfg.run.teacher.path, runtime, tests[0], cfg.eval)
        summary = write_summary({**summary, "speed": speed}, out / "eval" / f"teacher-{runtime}")
        rows.append(_row(teacher_spec, f"teacher-{runtime}", summary))
    for (spec, name, model), summary in zip(models, summaries):
        # each alone in a fresh process, as a device runs `asrkd transcribe`
        summary.update(in_fresh_process(_time, model, data["test"], cfg.eval))
        run_summary = out / "runs" / spec.name / "summary.json"
        trained = json.loads(run_summary.read_text())
        summary["best_dev_wer"] = trained.get("best_dev_wer")
        summary["train_precision"] = trained.get("precision", "fp32")  # runs before it: fp32
        if "pseudo_labels_checked" in trained:  # sequence KD: what its filter left out
            listed = run_summary.with_name(LEFT_OUT_FILE)  # runs trained before it: none
            summary["teacher_transcripts"] = {
                # None: a run trained before asrkd checked for that reason
                **{k: trained.get(f"pseudo_labels_{k}") for k in ("checked", *REASONS)},
                "listed_in": str(listed) if listed.is_file() else None,
            }  # fmt: skip
        if spec.name in dev_wer:
            summary["dev_wer"] = dev_wer[spec.name]
        write_summary(summary, out / "eval" / name)
        rows.append(_row(spec, name, summary))
        # the clean test set's transcripts, for the paired intervals of the targets' comparisons
        hyps = hyps_path(out / "eval" / name, next(iter(summary["sets"])), summary["decoding"])
        rows[-1]["hyps"] = str(hyps) if hyps.is_file() else None
    add_relative(rows)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


def evaluate_teacher_runtime(cfg: DemoConfig, runtime: str, tests: list[Path], out: Path) -> dict:
    """An external teacher's summary for one runtime, reused while its inputs are unchanged
    (its speed is measured again by every run: evaluate_runs)."""
    from asrkd.distill.teachers import file_sha256
    from asrkd.evaluation import MEMORY_PROBE
    from asrkd.teacher_eval import evaluate_teacher

    eval_dir = out / "eval" / f"teacher-{runtime}"
    stamp = {"teacher": cfg.run.teacher.path, "runtime": runtime,
             "tests": [file_sha256(t) for t in tests], "eval": to_dict(cfg.eval),
             "memory_probe": MEMORY_PROBE, "code": code_stamp()}  # fmt: skip
    done = eval_dir / "inputs.json"
    if done.is_file() and json.loads(done.read_text()) == stamp:
        return json.loads((eval_dir / "summary.json").read_text())
    # transcribed in a fresh process, as the students are scored in theirs
    summary = in_fresh_process(
        evaluate_teacher, cfg.run.teacher.path, runtime, tests, eval_dir, cfg.eval
    )
    done.write_text(json.dumps(stamp))
    return summary


def _row(spec, name: str, summary: dict) -> dict:
    """One table row from an evaluation summary (first test set clean, second noisy)."""
    sets = list(summary["sets"].values())
    test = sets[0]
    int8 = summary["format"] == "onnx-int8"
    return {
        "name": name,
        "scenario": spec.scenario,
        "preset": spec.preset,
        "strategy": spec.strategy,
        "variant": f"{spec.variant}-int8" if int8 else spec.variant,
        "format": summary["format"],
        "params": summary["n_params"],
        # the bytes a device holds: fp32 weights, or the whole int8 file
        "mb": (summary["bytes_on_disk"] if int8 else summary["bytes_fp32"]) / 1e6,
        "wer": test["wer"],
        "cer": test["cer"],
        "greedy_wer": test.get("greedy_wer", test["wer"]),
        "noisy_wer": sets[1]["wer"] if len(sets) > 1 else None,
        "oov_rate": test.get("oov_rate"),
        "latency_ms": summary["speed"]["latency_ms"],
        "rtf": summary["speed"]["rtf"],
        # the teacher runtimes time and probe the whole transcription: no decoder split
        "decoder_rtf": summary["speed"].get("decoder_rtf"),
        "memory_mb": summary["memory"]["model_memory_mb"],
        "decoder_mb": summary["memory"].get("decoder_mb"),
        "uses_teacher": spec.uses_teacher,
        "dev_wer": summary.get("dev_wer", summary.get("best_dev_wer")),
        "teacher_transcripts": summary.get("teacher_transcripts"),
        "train_precision": summary.get("train_precision"),  # None: the teacher
        "eval_precision": summary.get("precision"),  # None: ONNX files and teacher runtimes
    }


def _score(model: Path, tests: list[Path], out_dir: Path, score_cfg, cfg) -> dict:
    """Decode and score one model on the test cuts (score_cfg), and probe its memory (cfg)."""
    from asrkd.evaluation import evaluate, measure_costs

    summary = evaluate(model, tests, out_dir, score_cfg, measure=False)
    summary.update(measure_costs(model, tests[0], cfg, speed=False))
    return summary


def _time(model: Path, test: Path, cfg: EvalConfig) -> dict:
    """{"speed": ...} of one model file on the test cuts (asrkd.evaluation.measure_costs)."""
    from asrkd.evaluation import measure_costs

    return measure_costs(model, test, cfg, memory=False)


def scoring_config(cfg: DemoConfig) -> EvalConfig:
    """cfg.eval for decoding in parallel processes: one thread each when parallel_runs > 1."""
    return replace(cfg.eval, threads=1) if cfg.parallel_runs > 1 else cfg.eval


def in_processes(fn, jobs: list[tuple], n_workers: int) -> list:
    """[fn(*job) for job in jobs], n_workers fresh one-thread processes at a time (in this
    process when n_workers is 1). The jobs score models, so the workers start with the kernel
    caches capped as `asrkd evaluate` does (asrkd.precision.INFERENCE_ENV)."""
    if n_workers <= 1:
        return [fn(*job) for job in jobs]
    from asrkd.precision import INFERENCE_ENV
    from asrkd.processes import spawn_pool

    with spawn_pool(n_workers, env=INFERENCE_ENV) as pool:
        return list(pool.map(fn, *zip(*jobs)))


def in_fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a fresh interpreter started for it alone, with the kernel caches capped as
    `asrkd transcribe` caps them (asrkd.precision.INFERENCE_ENV). The demo times every model
    there, so that a row's speed does not depend on what the demo's long-lived process ran
    before it (the scoring, the other models, the LMs)."""
    from asrkd.precision import INFERENCE_ENV
    from asrkd.processes import spawn_pool

    with spawn_pool(1, env=INFERENCE_ENV) as pool:
        return pool.submit(fn, *args).result()


def add_relative(rows: list[dict]) -> None:
    """WER change against the same student without KD, memory against the teacher."""
    teacher = reference_teacher(rows)
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if r["scenario"] == row["scenario"]
                and r["preset"] == row["preset"]
                and r["variant"] == "none"
            ),
            None,
        )
        own = base is not None and row["scenario"] != "teacher"
        for key in ("wer", "cer"):
            row[f"{key}_change"] = (row[key] - base[key]) / base[key] if own and base[key] else None
        row["wer_base"] = base["wer"] if own else None
        row["size_vs_teacher"] = row["mb"] / teacher["mb"]
        row["params_vs_teacher"] = row["params"] / teacher["params"]
        row["memory_vs_teacher"] = (
            row["memory_mb"] / teacher["memory_mb"] if teacher["memory_mb"] > 0 else None
        )
        row["speed_vs_teacher"] = teacher["rtf"] / row["rtf"] if row["rtf"] > 0 else None


def reference_teacher(rows: list[dict]) -> dict:
    """The teacher row others are compared with: the fastest way the teacher was run (for an
    external Whisper teacher, faster-whisper int8 where measured)."""
    return min((r for r in rows if r["scenario"] == "teacher"), key=lambda r: r["rtf"])


def feature_timing(test: Path, cfg: DemoConfig) -> dict:
    """RTF of computing the students' features from audio without PyTorch (what a device does
    before the network: asrkd.data.audio.features_np) on the first eval.latency_utterances
    test cuts by id."""
    from asrkd.data.audio import features_np
    from asrkd.data.dataset import load_cuts

    cuts = sorted(load_cuts(test), key=lambda c: c.id)[: cfg.eval.latency_utterances]
    audio = [c.load_audio().mean(axis=0) for c in cuts]
    features_np(audio[0], cfg.prepare.features)  # warm-up
    t0 = time.perf_counter()
    for samples in audio:
        features_np(samples, cfg.prepare.features)
    seconds = time.perf_counter() - t0
    return {"kind": cfg.prepare.features.kind, "rtf": seconds / sum(c.duration for c in cuts)}
