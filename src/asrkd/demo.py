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

from asrkd.config import LEXICON_FIELDS, Config, DemoConfig, replace, save_config
from asrkd.data.dataset import load_cuts, speaker_of
from asrkd.data.validate import DataError

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
        return _last_setting(self.overrides, "distill.strategy") or "none"

    @property
    def uses_teacher(self) -> bool:
        """Distils, or starts from the teacher's layers (distill.init_from_teacher)."""
        init = _last_setting(self.overrides, "distill.init_from_teacher").lower()
        return self.strategy != "none" or init in ("true", "1", "yes")


def plan_runs(cfg: DemoConfig) -> list[RunSpec]:
    """The teacher, then per situation the student without KD and with each variant."""
    runs = [
        RunSpec(
            "teacher",
            "teacher",
            cfg.run.teacher.kind if cfg.external_teacher else cfg.teacher_preset,
            "none",
            cfg.teacher_overrides,
            0 if cfg.external_teacher else cfg.teacher_steps,  # nothing to train
        )
    ]
    variants = (("none", ()), *cfg.variants)
    for scenario in ("full", "partial"):
        for name, overrides in variants:
            chosen = cfg.full_variants if scenario == "full" else cfg.partial_variants
            if chosen and name not in ("none", *chosen):
                continue
            if scenario == "partial" and name == "none" and not cfg.partial_baseline:
                continue
            overrides = (*cfg.student_overrides, *overrides)
            preset = _last_setting(overrides, "model.preset") or cfg.student_preset
            runs.append(
                RunSpec(
                    f"{scenario}-{preset}-{name}",
                    scenario,
                    preset,
                    name,
                    overrides,
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


def _last_setting(overrides: tuple[str, ...], key: str) -> str:
    """The value the last `key=value` of `overrides` sets ('' when none does)."""
    values = [o.split("=", 1)[1].strip() for o in overrides if o.split("=", 1)[0].strip() == key]
    return values[-1] if values else ""


def prepare_data(cfg: DemoConfig, out: Path, librispeech: str | None) -> dict[str, Path]:
    """train/dev/test cut manifests of the embedded corpus or of a LibriSpeech folder, plus
    "test_noisy" (noise_snr_db > 0) and "unlabelled" (unlabelled_audio) when configured."""
    from asrkd.data.librispeech import prepare_librispeech

    manifests = out / "manifests"
    if librispeech is None:
        from asrkd.data.corpus import build_corpus

        root = build_corpus(cfg.corpus, out / "corpus")
        parts = ["train", "dev", "test"]
        data = prepare_librispeech(root, parts, manifests, cfg.prepare)
        test_dir = root / "test"
    else:
        root, parts = Path(librispeech), [cfg.librispeech_train_part, cfg.librispeech_test_part]
        paths = prepare_librispeech(root, parts, manifests, cfg.prepare)
        train, dev = split_dev_speakers(paths[parts[0]], cfg.librispeech_dev_speakers, out)
        data = {"train": train, "dev": dev, "test": paths[parts[1]]}
        test_dir = root / parts[1]
    if cfg.noise_snr_db > 0:
        noisy = write_noisy_copy(test_dir, out / "noisy", cfg)
        data["test_noisy"] = prepare_librispeech(
            noisy.parent, [noisy.name], manifests, cfg.prepare
        )[noisy.name]
    if cfg.unlabelled_audio:
        from asrkd.data.audio_folder import prepare_audio_folder

        data["unlabelled"] = prepare_audio_folder(cfg.unlabelled_audio, manifests, cfg.prepare)
    return data


def write_noisy_copy(part_dir: Path, out: Path, cfg: DemoConfig) -> Path:
    """A copy of a LibriSpeech-layout part with noise added to every utterance at
    cfg.noise_snr_db (asrkd.data.augment; the noise type and signal drawn per utterance from
    cfg.noise_seed and the file name, so the copy is the same on every machine). Idempotent:
    a finished copy (its marker names the settings) is reused."""
    import hashlib
    import shutil

    import numpy as np
    import soundfile as sf

    from asrkd.data.augment import add_noise, make_noise
    from asrkd.files import tree_files

    part_dir = Path(part_dir).resolve()
    settings = {"source": str(part_dir), "snr_db": cfg.noise_snr_db,
                "types": list(cfg.noise_types), "seed": cfg.noise_seed}  # fmt: skip
    dst = out / f"{part_dir.name}-snr{cfg.noise_snr_db:g}"
    marker = dst.with_name(dst.name + ".done")
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return dst
    marker.unlink(missing_ok=True)
    shutil.rmtree(dst, ignore_errors=True)
    files = tree_files(part_dir)  # as prepare reads it: links to folders followed
    if not any(src.suffix == ".flac" for src in files):  # never a finished empty copy
        raise DataError(f"{part_dir}: no .flac files to copy with noise")
    for src in files:
        target = dst / src.relative_to(part_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix != ".flac":
            shutil.copyfile(src, target)  # transcripts
            continue
        audio, rate = sf.read(str(src), dtype="float32")
        digest = hashlib.sha256(f"{cfg.noise_seed}:{src.name}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        kind = cfg.noise_types[int(rng.integers(len(cfg.noise_types)))]
        noisy = add_noise(audio, make_noise(rng, kind, len(audio), np.zeros(0)), cfg.noise_snr_db)
        peak = float(np.max(np.abs(noisy))) if len(noisy) else 0.0
        if peak > 0.99:  # no clipping; the SNR is unchanged by a common gain
            noisy = noisy * (0.99 / peak)
        sf.write(str(target), noisy, rate, format="FLAC")
    marker.write_text(json.dumps(settings))
    return dst


def stamp_matches(stamp: Path, inputs: dict) -> bool:
    """Whether the JSON file `stamp` records exactly `inputs` (what a stage's output was made
    from): the stage's output is then reused."""
    return stamp.is_file() and json.loads(stamp.read_text()) == inputs


def split_dev_speakers(cuts_path: Path, n_dev: int, out: Path) -> tuple[Path, Path]:
    """Hold out the first `n_dev` speakers (sorted ids) of a train manifest as dev speakers."""
    from asrkd.distill.teachers import file_sha256

    (out / "manifests").mkdir(parents=True, exist_ok=True)
    train_path = out / "manifests" / "cuts_train-split.jsonl.gz"
    dev_path = out / "manifests" / "cuts_dev-split.jsonl.gz"
    # Written once per source and split: gzip stamps the time into the file, and the teacher
    # cache and finished runs are keyed by the manifests' bytes, so rewriting them would make
    # every later stage stale.
    marker = out / "manifests" / "split.done"
    stamp = {"source": file_sha256(cuts_path), "n_dev": n_dev}
    if stamp_matches(marker, stamp) and dev_path.is_file():
        return train_path, dev_path
    cuts = load_cuts(cuts_path)
    speakers = sorted({speaker_of(c) for c in cuts})
    if len(speakers) <= n_dev:
        raise ValueError(f"{cuts_path}: {len(speakers)} speakers, cannot hold out {n_dev}")
    dev_spk = set(speakers[:n_dev])
    marker.unlink(missing_ok=True)
    cuts.filter(lambda c: speaker_of(c) not in dev_spk).to_file(train_path)
    cuts.filter(lambda c: speaker_of(c) in dev_spk).to_file(dev_path)
    marker.write_text(json.dumps(stamp))
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
    if "unlabelled" in data and spec.strategy != "none":  # only a teacher can label it
        overrides.append(f"data.unlabelled_cuts={data['unlabelled']}")
    if spec.uses_teacher and not cfg.external_teacher:
        # absolute: the run's saved config.yaml must work from any directory
        teacher = (out / "runs" / "teacher" / "model.safetensors").resolve()
        overrides.append(f"teacher.path={teacher}")
    return replace(cfg.run, overrides)


def train_or_reuse(run_cfg: Config) -> Path:
    """Train unless the run folder already holds a completed run of the same config; resume a
    run of the same config that was interrupted; start over when the config changed."""
    import shutil

    from asrkd.config import load_config, to_dict
    from asrkd.training import train

    def settings(c: Config) -> dict:
        """What the trained model depends on: not threads nor progress, nor the eval section
        (training selects checkpoints by greedy dev WER; a decoder setting retrains nothing)."""
        d = to_dict(replace(c, ["train.threads=0", "train.progress=false"]))
        d.pop("eval", None)
        return d

    out = Path(run_cfg.train.out_dir)
    saved, stamp = out / "config.yaml", out / "inputs.json"
    inputs = input_hashes(run_cfg)
    same = (
        saved.is_file()
        and settings(load_config(saved)) == settings(run_cfg)
        and stamp_matches(stamp, inputs)
    )
    if same and (out / "summary.json").is_file():
        log.info("reusing completed run %s", out)
        return out
    if not same and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(inputs, indent=2))
    return train(run_cfg, resume=same)


def input_hashes(cfg: Config) -> dict[str, str]:
    """sha256 of the files a run reads (manifests, teacher, tokenizer file): a rebuilt corpus or
    a retrained teacher behind the same paths must not let a stale run be reused."""
    from asrkd.distill.teachers import file_sha256

    paths = {
        "train_cuts": cfg.data.train_cuts,
        "dev_cuts": cfg.data.dev_cuts,
        "unlabelled_cuts": cfg.data.unlabelled_cuts,
        "teacher": cfg.teacher.path
        if cfg.distill.strategies != ("none",) or cfg.distill.init_from_teacher
        else "",
        "tokenizer": cfg.model.tokenizer if cfg.model.tokenizer not in ("char", "bpe") else "",
    }
    return {k: file_sha256(p) for k, p in paths.items() if p and Path(p).is_file()}


def train_in_parallel(configs: list[Config], n_workers: int) -> None:
    """Train (or reuse) runs `n_workers` at a time, each in a fresh process on one thread, under
    one progress bar fed by the runs' metrics.jsonl files. The first error stops the demo."""
    from concurrent.futures import FIRST_EXCEPTION, wait

    from tqdm import tqdm

    from asrkd.processes import spawn_pool

    configs = [replace(c, ["train.threads=1", "train.progress=false"]) for c in configs]
    total = sum(c.train.max_steps for c in configs)
    show = configs[0].train.progress if configs else False
    with (
        spawn_pool(n_workers) as pool,
        tqdm(total=total, desc="students", unit="step", disable=not show) as bar,
    ):
        pending = {pool.submit(train_or_reuse, c) for c in configs}
        while pending:
            done, pending = wait(pending, timeout=2.0, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                pool.shutdown(wait=True, cancel_futures=True)
                raise failed[0].exception()  # the run's own error, naming what to check
            bar.n = sum(_steps_done(c) for c in configs)
            bar.refresh()


def _steps_done(cfg: Config) -> int:
    """Steps a run has logged so far (its max_steps once it has a summary)."""
    out = Path(cfg.train.out_dir)
    if (out / "summary.json").is_file():
        return cfg.train.max_steps
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except ValueError:  # a row being written
            continue
    return 0


def dev_wers(cfg: DemoConfig, specs: list[RunSpec], out: Path, dev: Path) -> dict[str, float]:
    """Each student's (baselines aside) dev WER decoded as the test set is (cfg.eval): what the
    delivered student and each situation's best student are chosen by. With the greedy decoder
    it is the training run's best dev WER; with the lexicon decoder each student is decoded
    again (eval-dev/), as greedy and lexicon WER can rank students differently."""
    from asrkd.config import to_dict
    from asrkd.demo_scoring import in_processes, scoring_config
    from asrkd.distill.teachers import file_sha256
    from asrkd.evaluation import evaluate

    students = [s for s in specs if s.scenario != "teacher" and s.variant != "none"]
    if cfg.eval.decoder == "greedy":
        return {s.name: _summary(out, s)["best_dev_wer"] for s in students}

    # a student's dev WER is reused while its model, the dev set, the decoder and asrkd's code
    # are unchanged (threads aside: they change no WER)
    from asrkd.demo_scoring import code_stamp

    def wer(summary: dict) -> float:
        return next(iter(summary["sets"].values()))["wer"]

    decoder, dev_sha = {**to_dict(cfg.eval), "threads": None}, file_sha256(dev)
    wers, todo = {}, []
    for spec in students:
        model, folder = out / "runs" / spec.name / "model.safetensors", out / "eval-dev" / spec.name
        inputs = {"model": file_sha256(model), "dev": dev_sha, "eval": decoder,
                  "code": code_stamp()}  # fmt: skip
        if stamp_matches(folder / "inputs.json", inputs) and (folder / "summary.json").is_file():
            wers[spec.name] = wer(json.loads((folder / "summary.json").read_text()))
        else:
            (folder / "inputs.json").unlink(missing_ok=True)
            todo.append((spec, inputs, (model, [dev], folder, scoring_config(cfg), False)))
    summaries = in_processes(evaluate, [job for _, _, job in todo], cfg.parallel_runs)
    for (spec, inputs, job), summary in zip(todo, summaries):
        wers[spec.name] = wer(summary)
        (job[2] / "inputs.json").write_text(json.dumps(inputs))
    return {s.name: wers[s.name] for s in students}


def _summary(out: Path, spec: RunSpec) -> dict:
    return json.loads((out / "runs" / spec.name / "summary.json").read_text())


def deliver_int8(
    cfg: DemoConfig, specs: list[RunSpec], out: Path, dev_wer: dict[str, float]
) -> tuple[RunSpec, Path] | None:
    """Export the distilled student with the best dev WER (`dev_wer`, from dev_wers: the one a
    user would ship) as one int8 ONNX file, with the lexicon when the demo decodes with one;
    reused while the model and export settings are unchanged. None (and a warning) without the
    export extra."""
    from asrkd.config import ExportConfig, to_dict
    from asrkd.demo_scoring import code_stamp
    from asrkd.distill.teachers import file_sha256
    from asrkd.export import LEXICON_LAYOUT, export_model, require_onnx_exporter

    try:
        require_onnx_exporter()
    except ImportError as err:
        log.warning("demo: no int8 file for the report: %s", err)
        return None
    if not dev_wer:  # no distilled student
        return None
    best = next(s for s in specs if s.name == min(dev_wer, key=dev_wer.__getitem__))
    src = out / "runs" / best.name / "model.safetensors"
    dst = out / "export" / f"{best.name}-int8.onnx"
    export_cfg = ExportConfig(
        quantize=True,
        lexicon_cuts="train" if cfg.eval.decoder == "lexicon" and not cfg.eval.arpa else "",
        **{name: getattr(cfg.eval, name) for name in LEXICON_FIELDS},
    )
    stamp = dst.with_suffix(".inputs.json")
    inputs = {"model": file_sha256(src), "export": to_dict(export_cfg), "layout": LEXICON_LAYOUT,
              "code": code_stamp()}  # fmt: skip
    if export_cfg.arpa:  # an edited LM file behind the same path is a new export
        inputs["arpa"] = file_sha256(export_cfg.arpa)
    if dst.is_file() and stamp_matches(stamp, inputs):
        log.info("reusing %s", dst)
        return best, dst
    log.info(
        "demo: exporting %s (best dev WER %.1f%%, %s) as int8 ONNX",
        best.name, 100 * dev_wer[best.name], cfg.eval.decoder,
    )  # fmt: skip
    dst.parent.mkdir(parents=True, exist_ok=True)
    export_model(src, dst, export_cfg)
    stamp.write_text(json.dumps(inputs, indent=2))
    return best, dst


def deliver_sherpa(delivered: tuple[RunSpec, Path] | None, out: Path, test: Path) -> dict | None:
    """The delivered student exported for sherpa-onnx (int8) and scored through sherpa-onnx
    itself on the test set, timed: {"dir", "wer", "cer", "rtf", "mb"} (mb: the .onnx files
    sherpa-onnx loads); None (and a note in the log) where the sherpa extra is missing or the
    model cannot be exported for sherpa-onnx."""
    if delivered is None:
        return None
    import importlib.util

    from asrkd.config import ExportConfig, to_dict
    from asrkd.sherpa import SherpaError, evaluate_sherpa, export_sherpa, sherpa_model_bytes

    if importlib.util.find_spec("sherpa_onnx") is None:
        log.warning("demo: no sherpa-onnx row: pip install 'asrkd[sherpa]'")
        return None
    from asrkd.demo_scoring import code_stamp
    from asrkd.distill.teachers import file_sha256

    spec, _ = delivered
    folder = out / "export" / f"{spec.name}-sherpa-onnx"
    source = out / "runs" / spec.name / "model.safetensors"
    # reused while the model, the test set and asrkd's code are unchanged (a second run writes
    # nothing)
    stamp = folder.with_name(folder.name + ".inputs.json")
    result_file = folder.with_name(folder.name + ".result.json")
    export_cfg = ExportConfig(target="sherpa-onnx", quantize=True)
    inputs = {
        "model": file_sha256(source),
        "test": file_sha256(test),
        "export": to_dict(export_cfg),
        "code": code_stamp(),
    }
    if stamp_matches(stamp, inputs) and result_file.is_file():
        log.info("reusing %s", folder)
        return json.loads(result_file.read_text())
    stamp.unlink(missing_ok=True)
    try:
        export_sherpa(source, folder, export_cfg)
    except SherpaError as err:
        log.warning("demo: no sherpa-onnx row: %s", err)
        return None
    t0 = time.perf_counter()
    summary = evaluate_sherpa(folder, [test], out / "eval" / folder.name, threads=1)
    seconds = time.perf_counter() - t0
    result = next(iter(summary["sets"].values()))
    audio = sum(c.duration for c in load_cuts(test))
    mb = sherpa_model_bytes(folder) / 1e6
    row = {"dir": str(folder), "name": spec.name, "wer": result["wer"], "cer": result["cer"],
           "rtf": seconds / audio, "mb": mb}  # fmt: skip
    result_file.write_text(json.dumps(row, indent=2))
    stamp.write_text(json.dumps(inputs))
    return row


def evaluation_inputs(
    cfg: DemoConfig,
    specs: list[RunSpec],
    out: Path,
    data: dict[str, Path],
    delivered: tuple[RunSpec, Path] | None,
    dev_wer: dict[str, float],
) -> dict:
    """What the demo's table is measured from: every model file and test set (by content), the
    evaluation and teacher settings, the dev WERs that choose rows, how memory is probed, and
    asrkd's own code (demo_scoring.code_stamp)."""
    from asrkd.config import to_dict
    from asrkd.demo_scoring import code_stamp
    from asrkd.distill.teachers import file_sha256
    from asrkd.evaluation import MEMORY_PROBE

    models = {s.name: out / "runs" / s.name / "model.safetensors" for s in specs}
    if cfg.external_teacher:
        models.pop(specs[0].name)
    if delivered is not None:
        models["delivered"] = delivered[1]
    tests = {k: file_sha256(v) for k, v in data.items() if k in ("test", "test_noisy")}
    return {
        "models": {name: file_sha256(path) for name, path in models.items()},
        "tests": tests,
        "eval": to_dict(cfg.eval),
        "teacher": [cfg.run.teacher.path, list(cfg.teacher_runtimes)]
        if cfg.external_teacher
        else None,
        "dev_wer": dev_wer,
        "memory_probe": MEMORY_PROBE,
        "code": code_stamp(),  # asrkd's source: other code, every row measured again
    }


def run_demo(cfg: DemoConfig, librispeech: str | None = None) -> Path:
    """Run every stage, print the table, return the report path."""
    from asrkd.demo_report import print_table, write_report
    from asrkd.demo_scoring import evaluate_runs, feature_timing

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo.yaml")
    t0 = time.perf_counter()
    timings = {}
    data = prepare_data(cfg, out, librispeech)
    timings["data"] = time.perf_counter() - t0
    specs = plan_runs(cfg)
    trained = specs[1:] if cfg.external_teacher else specs  # an external teacher is not trained
    configs = [run_config(cfg, spec, data, out) for spec in trained]  # all validated up front
    # the teacher always trains alone
    sequential = len(trained) if cfg.parallel_runs == 1 else int(not cfg.external_teacher)
    for spec, run_cfg in zip(trained[:sequential], configs[:sequential]):
        t1 = time.perf_counter()
        log.info("demo: %s (%s, %s, %d steps)", spec.name, spec.preset, spec.variant, spec.steps)
        train_or_reuse(run_cfg)
        timings[spec.name] = time.perf_counter() - t1
    if cfg.external_teacher:  # its outputs once, on all threads, before students share cores
        from asrkd.runtime import build_teacher_caches

        t1 = time.perf_counter()
        for run_cfg in configs:
            build_teacher_caches(run_cfg)
        timings["teacher outputs"] = time.perf_counter() - t1
    if sequential < len(trained):
        t1 = time.perf_counter()
        train_in_parallel(configs[sequential:], cfg.parallel_runs)
        timings["students"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    dev_wer = dev_wers(cfg, specs, out, data["dev"])
    timings["dev decoding"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    delivered = deliver_int8(cfg, specs, out, dev_wer) if cfg.deliver_int8 else None
    timings["export"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    sherpa = deliver_sherpa(delivered, out, data["test"])
    timings["sherpa-onnx"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    # the table is reused whole while everything it was measured from is unchanged; else every
    # row is measured again, so that its speed ratios come from one run
    inputs = evaluation_inputs(cfg, specs, out, data, delivered, dev_wer)
    stamp, results = out / "eval" / "inputs.json", out / "results.json"
    if stamp_matches(stamp, inputs) and results.is_file():
        log.info("reusing %s (delete %s to measure again)", results, stamp)
        rows = json.loads(results.read_text())
    else:
        stamp.unlink(missing_ok=True)
        rows = evaluate_runs(specs, out, data, cfg, delivered, dev_wer)
        stamp.write_text(json.dumps(inputs, indent=2))
    timings["evaluate"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    features = feature_timing(data["test"], cfg)
    report = write_report(rows, out, cfg, timings, librispeech, sherpa, features)
    print_table(rows)
    print(f"\nreport: {report}   (total {timings['total'] / 60:.1f} min)")
    return report
