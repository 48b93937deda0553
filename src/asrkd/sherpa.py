"""sherpa-onnx as a target: an asrkd model exported as one of sherpa-onnx's offline model types,
and scored through sherpa-onnx itself. The type follows the model's features (MODEL_TYPES); it
is written into the file's metadata (`model_type`) and shows in the folder's files, from which
`sherpa_recognizer` builds the recogniser.

Whisper-encoder students (features.kind=whisper): sherpa-onnx's Moonshine type, the waveform
in, Whisper's log-mel and the CTC greedy search inside the graphs (asrkd.sherpa_waveform says
why no CTC type can give these students their features).

Conformer students (features.kind=fbank), model type: icefall's zipformer CTC
(`OfflineRecognizer.from_zipformer_ctc`, model_type "zipformer2_ctc"), because its front end
is asrkd's: sherpa-onnx computes kaldi-native-fbank with dither 0, snip_edges=False, povey window, 20 Hz to Nyquist - 400 Hz, samples in [-1, 1], 10 ms
hop, no normalisation outside the model — lhotse's Fbank defaults, on which icefall trains and so
does asrkd (max abs difference ~2e-3 on log-mel values, docs/benchmarks.md, "A student on device runtimes"). asrkd's
per-utterance mean/variance normalisation is inside the graph already. The graph takes
(x (N, T, 80) float32, x_lens (N,) int64) and returns (log_probs (N, T', V), lengths (N,)); the
vocabulary size is read from the output shape and the subsampling factor (4) is fixed, as for
icefall's models. NeMo CTC would need NeMo's features (librosa mel, hann window, no DC removal,
per-feature normalisation outside the graph) and WeNet CTC int16-scaled samples: neither is what
asrkd's models are trained on.

Folder written by `export_sherpa` (a Whisper-encoder student's: asrkd.sherpa_waveform)::

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
ZIPFORMER_CTC = "zipformer2_ctc"
MOONSHINE = "moonshine"
# sherpa-onnx's model type for each features.kind
MODEL_TYPES = {"fbank": ZIPFORMER_CTC, "whisper": MOONSHINE}
# metadata_props sherpa-onnx (and anyone reading the file) sees; icefall writes the same keys
SHERPA_METADATA = {
    "model_type": ZIPFORMER_CTC,
    "model_author": "asrkd",
    "comment": "asrkd Conformer-CTC student; load with OfflineRecognizer.from_zipformer_ctc",
    "subsampling_factor": "4",
}
MOONSHINE_METADATA = {
    "model_type": MOONSHINE,
    "model_author": "asrkd",
    "comment": "asrkd Whisper-encoder CTC student: Whisper log-mel and greedy CTC inside the "
    "graphs; load with OfflineRecognizer.from_moonshine (README.txt)",
}
# The only frame settings sherpa-onnx's zipformer CTC front end uses (it hard-codes a 10 ms
# shift for timestamps too).
SHERPA_FRAME_SHIFT = 0.01
SHERPA_FRAME_LENGTH = 0.025


class SherpaError(RuntimeError):
    """The model cannot be given to sherpa-onnx as asked (features or units it cannot run)."""


def model_file_name(quantize: bool) -> str:
    return "model.int8.onnx" if quantize else "model.onnx"


def token_symbols(tokenizer: Tokenizer) -> list[str]:
    """The tokenizer's symbols as tokens.txt writes them (index = id): the CTC blank as <blk>,
    a character model's space as "▁" (a symbol cannot be a space in this format; sherpa-onnx
    turns "▁" into a word boundary as for word pieces)."""
    symbols = []
    for i, sym in enumerate(tokenizer.symbols):
        if sym == BLANK:
            sym = SHERPA_BLANK
        elif sym == " ":
            sym = WORD_START
        if not sym or any(c.isspace() for c in sym):
            raise SherpaError(f"symbol {i} ({sym!r}) cannot be written to tokens.txt")
        symbols.append(sym)
    return symbols


def tokens_txt(tokenizer: Tokenizer) -> str:
    """sherpa-onnx's tokens.txt: "<symbol> <id>" per line (token_symbols)."""
    return "".join(f"{sym} {i}\n" for i, sym in enumerate(token_symbols(tokenizer)))


def check_features(features: FeatureConfig) -> str:
    """sherpa-onnx's model type for a model on these features; SherpaError where sherpa-onnx
    cannot give the model its features (fbank on other frames than sherpa-onnx's)."""
    if features.kind not in MODEL_TYPES:
        raise SherpaError(f"no sherpa-onnx model type for features.kind={features.kind!r}")
    if features.kind == "whisper":  # computed in the graph (FeatureConfig admits 16 kHz only)
        return MOONSHINE
    if (features.frame_shift, features.frame_length) != (SHERPA_FRAME_SHIFT, SHERPA_FRAME_LENGTH):
        raise SherpaError(
            f"sherpa-onnx computes 25 ms frames every 10 ms; this model was trained on "
            f"{1000 * features.frame_length:g} ms every {1000 * features.frame_shift:g} ms"
        )
    return ZIPFORMER_CTC


def readme(features: FeatureConfig, model_name: str, has_bpe: bool) -> str:
    if features.kind == "whisper":
        return readme_moonshine(features, model_name)
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


def readme_moonshine(features: FeatureConfig, encoder_name: str) -> str:
    return f"""An asrkd CTC model for sherpa-onnx (https://github.com/k2-fsa/sherpa-onnx): a
Whisper-encoder student. Its features ({features.n_mels}-bin Whisper log-mel) and its greedy
CTC search run inside the graphs, so it is given to sherpa-onnx as a Moonshine model:
preprocess.onnx (audio -> features), {encoder_name} (the student and its greedy search),
decode.onnx (reads the search's tokens back; serves as both Moonshine decoders).

Input: mono audio (sherpa-onnx resamples to 16 kHz), any length. Greedy search.

Python (pip install sherpa-onnx soundfile):

    import sherpa_onnx, soundfile as sf
    rec = sherpa_onnx.OfflineRecognizer.from_moonshine(
        preprocessor="preprocess.onnx", encoder="{encoder_name}",
        uncached_decoder="decode.onnx", cached_decoder="decode.onnx",
        tokens="tokens.txt", num_threads=1)
    samples, rate = sf.read("audio.wav", dtype="float32")
    stream = rec.create_stream()
    stream.accept_waveform(rate, samples)
    rec.decode_stream(stream)
    print(stream.result.text.replace("\u2581", " ").strip())

Command line (sherpa-onnx's binaries):

    sherpa-onnx-offline --moonshine-preprocessor=preprocess.onnx \\
      --moonshine-encoder={encoder_name} --moonshine-uncached-decoder=decode.onnx \\
      --moonshine-cached-decoder=decode.onnx --tokens=tokens.txt audio.wav

Or with asrkd (no PyTorch needed): asrkd transcribe {encoder_name} audio.wav
"""


def moonshine_tokens_txt(tokenizer: Tokenizer) -> str:
    """tokens.txt of a Moonshine-type folder: <blk> 0, <s> 1, </s> 2 and asrkd's id i at
    i + 2 (sherpa-onnx's Moonshine loop starts at 1 and ends at 2)."""
    from asrkd.sherpa_waveform import EOS, SOS, TOKEN_OFFSET

    symbols = token_symbols(tokenizer)[1:]  # without the blank
    shifted = [f"{sym} {i + TOKEN_OFFSET}\n" for i, sym in enumerate(symbols, start=1)]
    return f"{SHERPA_BLANK} 0\n<s> {SOS}\n</s> {EOS}\n" + "".join(shifted)


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
    model_type = check_features(features)
    tokenizer = Tokenizer.from_json(json.dumps(meta["tokenizer"]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = model_file_name(cfg.quantize)
    tokens = tokens_txt(tokenizer)
    if model_type == MOONSHINE:
        from asrkd.sherpa_waveform import encoder_file_name, export_moonshine

        export_moonshine(model_path, out_dir, cfg, extra_metadata=MOONSHINE_METADATA)
        name, tokens = encoder_file_name(cfg.quantize), moonshine_tokens_txt(tokenizer)
    else:
        export_model(
            model_path, out_dir / name, cfg, log_probs=True, extra_metadata=SHERPA_METADATA
        )
    atomic_write(out_dir / "tokens.txt", lambda p: Path(p).write_text(tokens))
    # a sentencepiece tokenizer: sherpa-onnx's CTC hotwords read bpe.model (Moonshine: none)
    proto = meta["tokenizer"].get("model") if model_type == ZIPFORMER_CTC else None
    if proto:
        atomic_write(out_dir / "bpe.model", lambda p: Path(p).write_bytes(base64.b64decode(proto)))
    text = readme(features, name, bool(proto))
    atomic_write(out_dir / "README.txt", lambda p: Path(p).write_text(text))
    return out_dir


# the file of an export_sherpa folder that carries the metadata, in order of preference
MODEL_FILES = ("model.onnx", "model.int8.onnx", "encode.onnx", "encode.int8.onnx")


def sherpa_model_path(model_dir: str | Path) -> Path:
    """model.onnx of an export_sherpa folder, else its model.int8.onnx (a Moonshine-type
    folder's: encode.onnx, else encode.int8.onnx)."""
    model_dir = Path(model_dir)
    for name in MODEL_FILES:
        path = model_dir / name
        if path.is_file() and (model_dir / "tokens.txt").is_file():
            return path
    raise ConfigError(f"{model_dir}: no {'/'.join(MODEL_FILES)} and tokens.txt")


def sherpa_model_bytes(model_dir: str | Path) -> int:
    """Bytes of the .onnx files sherpa-onnx loads from an export_sherpa folder."""
    model = sherpa_model_path(model_dir)
    files = [model] + [model.with_name(n) for n in ("preprocess.onnx", "decode.onnx")]
    return sum(f.stat().st_size for f in files if f.is_file())


def exported_metadata(model_dir: str | Path) -> tuple[str, FeatureConfig]:
    """(sherpa-onnx model type, feature settings) in an export_sherpa folder's model metadata;
    folders from before the Whisper-encoder export name no type: zipformer CTC."""
    from asrkd.ondevice import onnx_session, read_onnx_metadata

    model = sherpa_model_path(model_dir)
    props = onnx_session(model, threads=1).get_modelmeta().custom_metadata_map
    features = FeatureConfig(**read_onnx_metadata(props, model)["features"])
    model_type = props.get("model_type", ZIPFORMER_CTC)
    if model_type not in MODEL_TYPES.values():
        raise ConfigError(f"{model}: model_type={model_type!r} is not one asrkd exports")
    return model_type, features


def sherpa_model_type(model_dir: str | Path) -> str:
    """The sherpa-onnx model type of an export_sherpa folder, from its files (as the metadata
    `model_type` says; read without onnxruntime, which sherpa-onnx's process need not load)."""
    return MOONSHINE if sherpa_model_path(model_dir).name.startswith("encode") else ZIPFORMER_CTC


def exported_features(model_dir: str | Path) -> FeatureConfig:
    """The feature settings in an export_sherpa folder's model metadata (asrkd's keys)."""
    return exported_metadata(model_dir)[1]


def sherpa_recognizer(
    model_dir: str | Path,
    threads: int = 1,
    features: FeatureConfig | None = None,
    decoding: str = "greedy_search",
):
    """sherpa_onnx.OfflineRecognizer of an export_sherpa folder (model.onnx, else
    model.int8.onnx; encode.onnx, else encode.int8.onnx) of the folder's model type, for
    `features` (a zipformer CTC model's front end; read from its metadata when None)."""
    try:
        import sherpa_onnx
    except ImportError as err:
        raise ImportError("scoring through sherpa-onnx needs it: pip install sherpa-onnx") from err
    model = sherpa_model_path(model_dir)
    if sherpa_model_type(model_dir) == MOONSHINE:
        if decoding != "greedy_search":  # the search is inside the graphs
            raise SherpaError(f"{model_dir}: a Moonshine-type folder decodes greedily only")
        decoder = str(model.with_name("decode.onnx"))
        return sherpa_onnx.OfflineRecognizer.from_moonshine(
            preprocessor=str(model.with_name("preprocess.onnx")),
            encoder=str(model),
            uncached_decoder=decoder,
            cached_decoder=decoder,
            tokens=str(Path(model_dir) / "tokens.txt"),
            num_threads=threads,
        )
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
