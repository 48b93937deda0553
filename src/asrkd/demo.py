"""`asrkd demo`: the whole story on the embedded corpus (or a LibriSpeech folder).

corpus -> prepare -> teacher -> students (baseline, logit KD at its defaults, the other
strategies) in two situations -> evaluation on unseen test speakers -> report.

    (a) full:    the student has every transcript of the teacher's training data
    (b) partial: the student has transcripts for `partial_fraction` of the train speakers and the
                 rest as untranscribed audio; its baseline sees only the transcribed part
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from asrkd.config import Config, DemoConfig, replace, save_config
from asrkd.data.dataset import load_cuts, speaker_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """One row of the demo: a model to train (or reuse) and evaluate."""

    name: str
    scenario: str  # "teacher", "full" or "partial"
    preset: str
    variant: str  # "none" = trained without distillation
    overrides: tuple[str, ...]
    steps: int

    @property
    def strategy(self) -> str:
        sets = [o.split("=", 1)[1] for o in self.overrides if o.startswith("distill.strategy=")]
        return sets[-1] if sets else "none"


def plan_runs(cfg: DemoConfig) -> list[RunSpec]:
    """The teacher, then per situation the student without KD and with each variant."""
    runs = [
        RunSpec(
            "teacher",
            "teacher",
            cfg.teacher_preset,
            "none",
            cfg.teacher_overrides,
            cfg.teacher_steps,
        )
    ]
    variants = (("none", ()), *cfg.variants)
    for scenario in ("full", "partial"):
        for name, overrides in variants:
            runs.append(
                RunSpec(
                    f"{scenario}-{cfg.student_preset}-{name}",
                    scenario,
                    cfg.student_preset,
                    name,
                    (*cfg.student_overrides, *overrides),
                    cfg.student_steps,
                )
            )
    if cfg.small_student_preset:
        for name, overrides in variants[:2]:
            runs.append(
                RunSpec(
                    f"full-{cfg.small_student_preset}-{name}",
                    "full",
                    cfg.small_student_preset,
                    name,
                    (*cfg.student_overrides, *overrides),
                    cfg.student_steps,
                )
            )
    return runs


def prepare_data(cfg: DemoConfig, out: Path, librispeech: str | None) -> dict[str, Path]:
    """train/dev/test cut manifests of the embedded corpus or of a LibriSpeech folder."""
    from asrkd.data.librispeech import prepare_librispeech

    if librispeech is None:
        from asrkd.data.corpus import build_corpus

        root = build_corpus(cfg.corpus, out / "corpus")
        return prepare_librispeech(root, ["train", "dev", "test"], out / "manifests", cfg.prepare)
    parts = [cfg.librispeech_train_part, cfg.librispeech_test_part]
    paths = prepare_librispeech(librispeech, parts, out / "manifests", cfg.prepare)
    train, dev = split_dev_speakers(paths[parts[0]], cfg.librispeech_dev_speakers, out)
    return {"train": train, "dev": dev, "test": paths[parts[1]]}


def split_dev_speakers(cuts_path: Path, n_dev: int, out: Path) -> tuple[Path, Path]:
    """Hold out the first `n_dev` speakers (sorted ids) of a train manifest as dev speakers."""
    cuts = load_cuts(cuts_path)
    speakers = sorted({speaker_of(c) for c in cuts})
    if len(speakers) <= n_dev:
        raise ValueError(f"{cuts_path}: {len(speakers)} speakers, cannot hold out {n_dev}")
    dev_spk = set(speakers[:n_dev])
    (out / "manifests").mkdir(parents=True, exist_ok=True)
    train_path = out / "manifests" / "cuts_train-split.jsonl.gz"
    dev_path = out / "manifests" / "cuts_dev-split.jsonl.gz"
    cuts.filter(lambda c: speaker_of(c) not in dev_spk).to_file(train_path)
    cuts.filter(lambda c: speaker_of(c) in dev_spk).to_file(dev_path)
    return train_path, dev_path


def run_config(cfg: DemoConfig, spec: RunSpec, data: dict[str, Path], out: Path) -> Config:
    overrides = [
        f"data.train_cuts={data['train']}",
        f"data.dev_cuts={data['dev']}",
        f"data.test_cuts=[{data['test']}]",
        f"model.preset={spec.preset}",
        f"train.max_steps={spec.steps}",
        f"train.out_dir={out / 'runs' / spec.name}",
        *spec.overrides,
    ]
    if spec.scenario == "partial":
        overrides.append(f"data.labelled_fraction={cfg.partial_fraction}")
    if spec.strategy != "none":
        overrides.append(f"teacher.path={out / 'runs' / 'teacher' / 'model.safetensors'}")
    return replace(cfg.run, overrides)


def train_or_reuse(run_cfg: Config) -> Path:
    """Train unless the run folder already holds a completed run of the same config; resume a
    run of the same config that was interrupted; start over when the config changed."""
    import shutil

    from asrkd.config import load_config, to_dict
    from asrkd.train import train

    out = Path(run_cfg.train.out_dir)
    saved = out / "config.yaml"
    same = saved.is_file() and to_dict(load_config(saved)) == to_dict(run_cfg)
    if same and (out / "summary.json").is_file():
        log.info("reusing completed run %s", out)
        return out
    if not same and out.exists():
        shutil.rmtree(out)
    return train(run_cfg, resume=same)


def run_demo(cfg: DemoConfig, librispeech: str | None = None) -> Path:
    """Run every stage, print the table, return the report path."""
    from asrkd.demo_report import evaluate_runs, print_table, write_report

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo.yaml")
    t0 = time.perf_counter()
    timings = {}
    data = prepare_data(cfg, out, librispeech)
    timings["data"] = time.perf_counter() - t0
    specs = plan_runs(cfg)
    configs = [run_config(cfg, spec, data, out) for spec in specs]  # all validated up front
    for spec, run_cfg in zip(specs, configs):
        t1 = time.perf_counter()
        log.info("demo: %s (%s, %s, %d steps)", spec.name, spec.preset, spec.variant, spec.steps)
        train_or_reuse(run_cfg)
        timings[spec.name] = time.perf_counter() - t1
    t1 = time.perf_counter()
    rows = evaluate_runs(specs, out, data, cfg)
    timings["evaluate"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    report = write_report(rows, out, cfg, timings, librispeech)
    print_table(rows)
    print(f"\nreport: {report}   (total {timings['total'] / 60:.1f} min)")
    return report
