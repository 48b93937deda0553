"""Scoring a pretrained Whisper teacher the way people run it, beside asrkd's students.

A student's row in a report is measured by asrkd.evaluation; the teacher it was distilled from
gets one row per runtime, measured on the same test sets in the same run:

    pytorch               transformers' Whisper classes (weights read by asrkd, fp32), greedy:
                          the path asrkd's teacher cache uses for hidden states
    faster-whisper-int8   CTranslate2 through faster-whisper, int8 weights, greedy: the fastest
                          way people run Whisper on a CPU today
    faster-whisper-fp32   the same in float32

Each utterance is transcribed alone (batch 1), its text normalised to asrkd's units like the
teacher's pseudo-labels (numbers spelt out), and timed; the RTF is the summed time over the
summed audio. Peak memory is probed in a fresh process, as for students.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from asrkd.config import EvalConfig
from asrkd.files import tree_bytes

RUNTIMES = ("pytorch", "faster-whisper-int8", "faster-whisper-fp32")


def open_teacher(path: str | Path, runtime: str, threads: int):
    """A WhisperTeacher whose `transcribe` runs one 16 kHz utterance with `runtime`."""
    import torch

    from asrkd.distill.whisper_teacher import WhisperTeacher

    if runtime not in RUNTIMES:
        raise ValueError(f"unknown Whisper runtime {runtime!r}: one of {', '.join(RUNTIMES)}")
    if threads:
        torch.set_num_threads(threads)  # faster-whisper takes torch's thread count too
    if runtime == "pytorch":
        teacher = WhisperTeacher(path, beam=1, runtime="transformers")
    else:
        compute = runtime.removeprefix("faster-whisper-").replace("fp32", "float32")
        teacher = WhisperTeacher(path, beam=1, compute_type=compute, runtime="faster-whisper")
    return teacher


def _utterances(cuts_path: str | Path) -> list[tuple[str, str, np.ndarray]]:
    """(cut id, normalised reference, 16 kHz mono audio) of every cut, sorted by id."""
    from asrkd.data.dataset import cut_text, load_cuts
    from asrkd.data.text import normalize_text

    rows = []
    for cut in sorted(load_cuts(cuts_path), key=lambda c: c.id):
        audio = cut.load_audio()
        rows.append((cut.id, normalize_text(cut_text(cut)), audio.mean(axis=0).astype(np.float32)))
    return rows


def evaluate_teacher(
    path: str | Path, runtime: str, cuts_paths: list[str | Path], out_dir: str | Path,
    cfg: EvalConfig,
) -> dict:  # fmt: skip
    """Transcribe every test set with one runtime; WER/CER files as asrkd.evaluation writes
    them, speed over all utterances of the first set, memory probed in a fresh process."""
    from asrkd.data.normalize import normalize_english
    from asrkd.scoring import write_results, write_summary

    out_dir = Path(out_dir)
    teacher = open_teacher(path, runtime, cfg.threads)
    transcribe = teacher.transcribe
    n_params = sum(p.numel() for p in teacher.model.parameters())  # the same weights either way
    summary: dict = {"model": str(path), "format": runtime, "n_params": n_params,
                     "bytes_fp32": 4 * n_params, "bytes_on_disk": _folder_bytes(path),
                     "sets": {}}  # fmt: skip
    for i, cuts_path in enumerate(cuts_paths):
        utts = _utterances(cuts_path)
        texts, seconds = _transcribe_timed(transcribe, utts)
        results = [(cut_id, ref, normalize_english(raw) or "")
                   for (cut_id, ref, _), raw in zip(utts, texts)]  # fmt: skip
        name = Path(cuts_path).name.split(".")[0].removeprefix("cuts_")
        summary["sets"][name] = write_results(results, out_dir, name, f"{runtime}-greedy")
        if i == 0:
            summary["speed"] = _speed(seconds, utts, cfg)
    if cuts_paths:
        summary["memory"] = measure_teacher_memory(path, runtime, cuts_paths[0], cfg)
    return write_summary(summary, out_dir)


def time_teacher(path: str | Path, runtime: str, cuts_path: str | Path, cfg: EvalConfig) -> dict:
    """evaluate_teacher's speed figures alone: every utterance of `cuts_path` transcribed one at
    a time with `runtime` after a warm-up, timed, not scored (a run that reuses the teacher's
    WER still times it beside its students)."""
    utts = _utterances(cuts_path)
    _, seconds = _transcribe_timed(open_teacher(path, runtime, cfg.threads).transcribe, utts)
    return _speed(seconds, utts, cfg)


def _transcribe_timed(transcribe, utts: list[tuple[str, str, np.ndarray]]) -> tuple[list, float]:
    """(raw text of each utterance, seconds spent transcribing them), after one warm-up."""
    transcribe(utts[0][2])
    texts, seconds = [], 0.0
    for _, _, audio in utts:
        t0 = time.perf_counter()
        texts.append(transcribe(audio))
        seconds += time.perf_counter() - t0
    return texts, seconds


def _speed(seconds: float, utts: list[tuple[str, str, np.ndarray]], cfg: EvalConfig) -> dict:
    audio_s = sum(len(a) for _, _, a in utts) / 16000
    return {"latency_ms": 1000 * seconds / len(utts), "rtf": seconds / audio_s,
            "latency_utterances": len(utts), "threads": cfg.threads}  # fmt: skip


def _folder_bytes(path: str | Path) -> int:
    path = Path(path)
    if path.is_dir():
        return tree_bytes(path)
    return 0  # a Hub id: the files live in transformers' cache


def measure_teacher_memory(path, runtime: str, cuts_path, cfg: EvalConfig) -> dict:
    """Peak resident memory added by loading the teacher and transcribing
    cfg.latency_utterances utterances one at a time, in a fresh process (malloc set as for the
    students', asrkd.evaluation.probe_env)."""
    from asrkd.evaluation import probe_env

    code = (
        "import json,sys; from asrkd.teacher_eval import _memory_probe; "
        "print(json.dumps(_memory_probe(*sys.argv[1:4], int(sys.argv[4]), int(sys.argv[5]))))"
    )
    args = [str(path), runtime, str(cuts_path), str(cfg.latency_utterances), str(cfg.threads)]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          check=False, env=probe_env())  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"teacher memory probe failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_probe(path: str, runtime: str, cuts_path: str, n_utts: int, threads: int) -> dict:
    from asrkd.evaluation import _status_mb

    utts = _utterances(cuts_path)[:n_utts]
    if runtime == "pytorch":
        import torch  # noqa: F401  the framework's own code is not the model's memory
    else:
        import ctranslate2  # noqa: F401
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark VmHWM to the current RSS
    teacher = open_teacher(path, runtime, threads)
    for _, _, audio in utts:
        teacher.transcribe(audio)
    peak = _status_mb("VmHWM")
    return {"peak_rss_mb": peak, "baseline_rss_mb": base, "model_memory_mb": peak - base}
