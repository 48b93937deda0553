"""sherpa-onnx as a target: an asrkd model exported as one of sherpa-onnx's offline CTC model
types, and scored through sherpa-onnx itself.

Model type: icefall's zipformer CTC (`OfflineRecognizer.from_zipformer_ctc`, model_type
"zipformer2_ctc"), because its front end is asrkd's: sherpa-onnx computes kaldi-native-fbank with
dither 0, snip_edges=False, povey window, 20 Hz to Nyquist - 400 Hz, samples in [-1, 1], 10 ms
hop, no normalisation outside the model — lhotse's Fbank defaults, on which icefall trains and so
does asrkd (max abs difference ~2e-3 on log-mel values, docs/benchmarks.md, "A student on device runtimes"). asrkd's
per-utterance mean/variance normalisation is inside the graph already. The graph takes
(x (N, T, 80) float32, x_lens (N,) int64) and returns (log_probs (N, T', V), lengths (N,)); the
vocabulary size is read from the output shape and the subsampling factor (4) is fixed, as for
icefall's models. NeMo CTC would need NeMo's features (librosa mel, hann window, no DC removal,
per-feature normalisation outside the graph) and WeNet CTC int16-scaled samples: neither is what
asrkd's models are trained on.

Folder written by `export_sherpa`::

    model.onnx | model.int8.onnx   the graph (log-softmax outputs) with asrkd's metadata too, so
                                   `asrkd transcribe` runs the same file
    tokens.txt                     "<symbol> <id>" per line; <blk> at 0; "▁" starts a word
    bpe.model                      the sentencepiece model (word-piece tokenizers only: hotwords)
    README.txt                     how to run it

Dimension legend: N batch, T feature frames, T' output frames, V vocabulary.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from asrkd.config import ConfigError, ExportConfig, FeatureConfig
from asrkd.data.text import BLANK, WORD_START, Tokenizer
from asrkd.scoring import Result, write_results, write_summary

SHERPA_BLANK = "<blk>"
# metadata_props sherpa-onnx (and anyone reading the file) sees; icefall writes the same keys
SHERPA_METADATA = {
    "model_type": "zipformer2_ctc",
    "model_author": "asrkd",
    "comment": "asrkd Conformer-CTC student; load with OfflineRecognizer.from_zipformer_ctc",
    "subsampling_factor": "4",
}
# The only frame settings sherpa-onnx's zipformer CTC front end uses (it hard-codes a 10 ms
# shift for timestamps too).
SHERPA_FRAME_SHIFT = 0.01
SHERPA_FRAME_LENGTH = 0.025


class SherpaError(RuntimeError):
    """The model cannot be given to sherpa-onnx as asked (features or units it cannot run)."""


def model_file_name(quantize: bool) -> str:
    return "model.int8.onnx" if quantize else "model.onnx"


def tokens_txt(tokenizer: Tokenizer) -> str:
    """sherpa-onnx's tokens.txt: "<symbol> <id>" per line, the CTC blank as <blk>. A character
    model's space becomes "▁" (a symbol cannot be a space in this format; sherpa-onnx turns
    "▁" into a word boundary as for word pieces)."""
    lines = []
    for i, sym in enumerate(tokenizer.symbols):
        if sym == BLANK:
            sym = SHERPA_BLANK
        elif sym == " ":
            sym = WORD_START
        if not sym or any(c.isspace() for c in sym):
            raise SherpaError(f"symbol {i} ({sym!r}) cannot be written to tokens.txt")
        lines.append(f"{sym} {i}\n")
    return "".join(lines)


def check_features(features: FeatureConfig) -> None:
    """SherpaError unless sherpa-onnx computes exactly these features."""
    if features.kind != "fbank":
        raise SherpaError(
            f"sherpa-onnx's CTC models hear kaldi fbank; this model was trained on "
            f"features.kind={features.kind!r} (Whisper-encoder students run through `asrkd "
            "transcribe` on the exported .onnx file, without PyTorch, instead)"
        )
    if (features.frame_shift, features.frame_length) != (SHERPA_FRAME_SHIFT, SHERPA_FRAME_LENGTH):
        raise SherpaError(
            f"sherpa-onnx computes 25 ms frames every 10 ms; this model was trained on "
            f"{1000 * features.frame_length:g} ms every {1000 * features.frame_shift:g} ms"
        )


def readme(features: FeatureConfig, model_name: str, has_bpe: bool) -> str:
    hotwords = (
        "\nHotwords (modified_beam_search in sherpa-onnx's offline CTC is prefix_beam_search)\n"
        "use bpe.model to split words into the pieces of tokens.txt.\n"
        if has_bpe
        else ""
    )
    return f"""An asrkd CTC model for sherpa-onnx (https://github.com/k2-fsa/sherpa-onnx).

Model type: icefall zipformer CTC (offline). Input: 16-bit or float mono audio; sherpa-onnx
computes the features ({features.n_mels}-dim fbank at {features.sample_rate} Hz, as asrkd does).

Python (pip install sherpa-onnx soundfile):

    import sherpa_onnx, soundfile as sf
    rec = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
        model="{model_name}", tokens="tokens.txt", num_threads=1,
        sample_rate={features.sample_rate}, feature_dim={features.n_mels},
        decoding_method="greedy_search")
    samples, rate = sf.read("audio.wav", dtype="float32")
    stream = rec.create_stream()
    stream.accept_waveform(rate, samples)
    rec.decode_stream(stream)
    print(stream.result.text.strip())

Command line (sherpa-onnx's binaries):

    sherpa-onnx-offline --zipformer-ctc-model={model_name} --tokens=tokens.txt audio.wav

Or with asrkd (no PyTorch needed): asrkd transcribe {model_name} audio.wav
{hotwords}"""


def export_sherpa(
    model_path: str | Path, out_dir: str | Path, cfg: ExportConfig | None = None
) -> Path:
    """Write the sherpa-onnx folder of the model file at `model_path` into `out_dir` (created;
    its model, tokens, bpe.model and README files replaced) and return `out_dir`.
    cfg.quantize writes model.int8.onnx (int8 weights) instead of model.onnx."""
    from asrkd.export import export_model
    from asrkd.models.checkpoint import atomic_write, read_checkpoint_meta

    cfg = cfg or ExportConfig(target="sherpa-onnx")
    meta = read_checkpoint_meta(model_path)
    features = FeatureConfig(**(meta.get("features") or {}))
    check_features(features)
    tokenizer = Tokenizer.from_json(json.dumps(meta["tokenizer"]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = model_file_name(cfg.quantize)
    export_model(model_path, out_dir / name, cfg, log_probs=True, extra_metadata=SHERPA_METADATA)
    atomic_write(out_dir / "tokens.txt", lambda p: Path(p).write_text(tokens_txt(tokenizer)))
    proto = meta["tokenizer"].get("model")
    if proto:  # a sentencepiece tokenizer: sherpa-onnx's hotwords read bpe.model
        atomic_write(out_dir / "bpe.model", lambda p: Path(p).write_bytes(base64.b64decode(proto)))
    text = readme(features, name, bool(proto))
    atomic_write(out_dir / "README.txt", lambda p: Path(p).write_text(text))
    return out_dir


def sherpa_model_path(model_dir: str | Path) -> Path:
    """model.onnx of an export_sherpa folder, else its model.int8.onnx."""
    model_dir = Path(model_dir)
    for quantize in (False, True):
        path = model_dir / model_file_name(quantize)
        if path.is_file() and (model_dir / "tokens.txt").is_file():
            return path
    raise ConfigError(f"{model_dir}: no model.onnx/model.int8.onnx and tokens.txt")


def exported_features(model_dir: str | Path) -> FeatureConfig:
    """The feature settings in an export_sherpa folder's model metadata (asrkd's keys)."""
    from asrkd.ondevice import onnx_session, read_onnx_metadata

    model = sherpa_model_path(model_dir)
    props = onnx_session(model, threads=1).get_modelmeta().custom_metadata_map
    return FeatureConfig(**read_onnx_metadata(props, model)["features"])


def sherpa_recognizer(
    model_dir: str | Path,
    threads: int = 1,
    features: FeatureConfig | None = None,
    decoding: str = "greedy_search",
):
    """sherpa_onnx.OfflineRecognizer of an export_sherpa folder (model.onnx, else
    model.int8.onnx) for `features` (read from the model's metadata when None)."""
    try:
        import sherpa_onnx
    except ImportError as err:
        raise ImportError("scoring through sherpa-onnx needs it: pip install sherpa-onnx") from err
    model = sherpa_model_path(model_dir)
    features = features or exported_features(model_dir)
    return sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
        model=str(model),
        tokens=str(Path(model_dir) / "tokens.txt"),
        num_threads=threads,
        sample_rate=features.sample_rate,
        feature_dim=features.n_mels,
        decoding_method=decoding,
    )


def sherpa_text(text: str) -> str:
    """sherpa-onnx's result text as asrkd writes text: "▁" as spaces, single spaces."""
    return " ".join(text.replace(WORD_START, " ").split())


def sherpa_decode_manifest(model_dir: str | Path, cuts_path: str | Path, threads: int = 1):
    """(cut id, reference, sherpa-onnx's greedy hypothesis) of every cut, sorted by cut id."""
    from asrkd.data.text import normalize_text
    from asrkd.ondevice import load_cut_audio, read_cut_manifest

    features = exported_features(model_dir)
    recognizer = sherpa_recognizer(model_dir, threads, features)
    results: list[Result] = []
    for cut in read_cut_manifest(cuts_path):
        samples = load_cut_audio(cut, features.sample_rate)
        stream = recognizer.create_stream()
        stream.accept_waveform(features.sample_rate, samples)
        recognizer.decode_stream(stream)
        results.append((cut.id, normalize_text(cut.text), sherpa_text(stream.result.text)))
    return sorted(results)


def evaluate_sherpa(
    model_dir: str | Path, cuts_paths: list[str | Path], out_dir: str | Path, threads: int = 1
) -> dict:
    """Score an export_sherpa folder through sherpa-onnx (greedy search) on each cut manifest:
    hyps/errors/wer files tagged "sherpa-greedy" and summary.json in `out_dir`, as
    `asrkd evaluate` writes them; returns the summary ({"sets": {name: {"wer", ...}}})."""
    out_dir = Path(out_dir)
    summary: dict = {"model": str(model_dir), "runtime": "sherpa-onnx", "sets": {}}
    for path in cuts_paths:
        name = Path(path).name.split(".")[0].removeprefix("cuts_")
        results = sherpa_decode_manifest(model_dir, path, threads)
        summary["sets"][name] = write_results(results, out_dir, name, "sherpa-greedy")
    return write_summary(summary, out_dir)
