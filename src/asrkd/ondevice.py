"""The PyTorch-free path: an exported .onnx file (`asrkd export`) run on raw audio with what a
device carries — kaldi-native-fbank features (asrkd.data.audio.knf_fbank, the front end
sherpa-onnx runs too), onnxruntime for the network, and the decoders of asrkd.lexicon (greedy
CTC, or the lexicon beam search). Cut manifests are read with gzip + json and audio with
soundfile, so neither torch nor lhotse is imported here or by what this module imports;
tests/test_sherpa.py runs `asrkd transcribe` and `asrkd evaluate` with both blocked.

`asrkd transcribe` and `asrkd evaluate` on an .onnx file come here, so an exported file is
scored from audio exactly as a device would run it (not from the features `asrkd prepare`
stored). Dimension legend: T feature frames, F mel bins, T' output frames, V vocabulary.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from asrkd.config import (
    LEXICON_ENGINE,
    LEXICON_ENGINES,
    TOKEN_PRUNE,
    CheckpointError,
    EvalConfig,
    FeatureConfig,
)
from asrkd.data.audio import features_np, load_mono, resample_mono
from asrkd.data.text import Tokenizer, normalize_text
from asrkd.data.validate import DataError
from asrkd.lexicon import ArpaSource, LexiconDecoder, WordLM, eval_decoder, training_manifest
from asrkd.scoring import Result, write_set, write_summary

log = logging.getLogger(__name__)

ONNX_FORMAT = "asrkd-onnx/1"
LEXICON_ARPA_KEY = "asrkd.lexicon_arpa_gz"  # the lexicon decoder's LM (lexicon.ArpaSource)
INPUT_NAMES = ("feats", "feat_lens")
OUTPUT_NAMES = ("logits", "lengths")


def is_onnx(model_path: str | Path) -> bool:
    return Path(model_path).suffix.lower() == ".onnx"


LEXICON_PROPS = ("asrkd.lexicon", "asrkd.lexicon_gz", LEXICON_ARPA_KEY)  # a file's lexicon


METADATA_FIELD = 14  # ModelProto.metadata_props: StringStringEntryProto {key = 1, value = 2}


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def _fields(data: memoryview):
    """(field number, start, value start, end) of a protobuf message's top-level fields; the
    value start is that of a length-delimited field's bytes (None for the other wire types)."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        field, wire, value = key >> 3, key & 7, None
        if wire == 0:
            pos = _varint(data, pos)[1]
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, value = _varint(data, pos)
            pos = value + size
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {start}")
        if pos > len(data):
            raise ValueError("the message ends inside a field")
        yield field, start, value, pos


def model_without_lexicon(path: str | Path) -> tuple[bytes, dict[str, str]] | None:
    """An exported file's metadata (every entry) and its model serialised again without the
    lexicon's entries (LEXICON_PROPS), for onnx_session; None for a file without a lexicon.
    onnxruntime holds a model's metadata as long as its session lives: the real-speech
    recipe's int8 file with its trigram LM (45 MB of packed ARPA text) took 174 MB in a session
    of the whole file. The file's top-level protobuf fields are read here (the onnx package's
    import alone takes 0.5 s); a file that is not one is a CheckpointError."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such model file")
    data = memoryview(Path(path).read_bytes())
    props: dict[str, str] = {}
    kept: list[memoryview] = []
    try:
        for field, start, value, end in _fields(data):
            if field != METADATA_FIELD or value is None:
                kept.append(data[start:end])
                continue
            message = data[value:end]
            entry = {f: bytes(message[v:e]).decode("utf-8") for f, _, v, e in _fields(message)
                     if v is not None}  # fmt: skip
            key = entry.get(1, "")
            props[key] = entry.get(2, "")
            if key not in LEXICON_PROPS:
                kept.append(data[start:end])
    except (ValueError, IndexError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ONNX model ({err})") from err
    if not any(k in props for k in LEXICON_PROPS):
        return None
    return b"".join(kept), props


def onnx_session(path: str | Path, threads: int = 0, model: bytes | None = None):
    """An onnxruntime CPU session of an exported file (or of `model`, its serialised bytes,
    e.g. model_without_lexicon's); threads=0 lets onnxruntime decide."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError(
            "running .onnx models needs onnxruntime: pip install onnxruntime"
        ) from err
    if model is None and not Path(path).is_file():
        raise CheckpointError(f"{path}: no such model file")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1  # one utterance at a time: no parallel branches worth a thread
    # onnxruntime's threads otherwise spin after every run, on the cores the decoder (Python,
    # right after the network) needs: int8 student, 2 cores, decoder RTF 0.0038 -> 0.0024 and
    # network + decoder 0.0086 -> 0.0062 (docs/benchmarks.md)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # No memory arena: it keeps the largest activations of any utterance resident after the
    # run (the int8 real-speech student over 100 test-other utterances: peak 247 -> 208 MB,
    # network RTF within the noise of 5 alternating rounds; docs/benchmarks.md)
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    try:
        source = model if model is not None else str(path)
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's InvalidProtobuf, Fail, ... share no base class
        raise CheckpointError(f"{path}: unreadable ONNX model ({err})") from err


def read_onnx_metadata(
    props: dict[str, str], path: str | Path = "", lexicon: bool = True
) -> dict[str, Any]:
    """Decoded asrkd metadata (dims, tokenizer, features, quantized, lexicon) of an exported
    file's metadata_props, e.g. onnxruntime's ``session.get_modelmeta().custom_metadata_map``;
    lexicon=False leaves the lexicon (the bulk of it) undecoded and out."""
    if not lexicon:
        props = {k: v for k, v in props.items() if k not in LEXICON_PROPS}
    if props.get("asrkd.format") != ONNX_FORMAT:
        found = props.get("asrkd.format")
        raise CheckpointError(f"{path}: not an asrkd ONNX export (asrkd.format={found!r})")
    try:
        meta = {
            k[len("asrkd.") :]: json.loads(v)
            for k, v in props.items()
            if k.startswith("asrkd.") and k not in ("asrkd.format", LEXICON_ARPA_KEY)
        }
        if "lexicon_gz" in meta:  # files exported before it was zipped hold "lexicon" as JSON
            meta["lexicon"] = unpack_lexicon(meta.pop("lexicon_gz"))
        if LEXICON_ARPA_KEY in props and meta.get("lexicon"):  # base64 text, not JSON: kept
            meta["lexicon"]["arpa_gz"] = props[LEXICON_ARPA_KEY]  # packed until searched
    except (ValueError, OSError, EOFError, zlib.error) as err:  # JSON, base64, gzip
        raise CheckpointError(f"{path}: corrupt asrkd metadata ({err})") from err
    return meta


def pack_lexicon(lexicon: dict[str, Any]) -> str:
    """A lexicon's JSON, gzipped and base64-encoded for a metadata string (unpack_lexicon)."""
    return base64.b64encode(gzip.compress(json.dumps(lexicon).encode(), 6)).decode("ascii")


def unpack_lexicon(packed: str) -> dict[str, Any]:
    return json.loads(gzip.decompress(base64.b64decode(packed, validate=True)))


def lexicon_from_metadata(
    meta: dict[str, Any], tokenizer: Tokenizer, engine: str | None = None, path: str | Path = ""
) -> LexiconDecoder | None:
    """The lexicon decoder an exported file carries (read_onnx_metadata's dict), or None;
    searched by `engine` (EvalConfig.lexicon_engine), or when None by the search the file was
    exported with (ExportConfig.lexicon_engine; files from before it was stored: LEXICON_ENGINE)."""
    lex = meta.get("lexicon")
    if not lex:
        return None
    engine = engine or lex.get("engine", LEXICON_ENGINE)
    if engine not in LEXICON_ENGINES:
        raise CheckpointError(f"{path}: unknown lexicon search {engine!r} (not one of "
                              f"{', '.join(LEXICON_ENGINES)})")  # fmt: skip
    lm, arpa = None, None
    if "log_probs" in lex:  # files exported before 2026-12-06 hold the LM's tables as JSON
        lm = WordLM.from_json(lex)
    elif lex.get("arpa_gz"):
        arpa = ArpaSource(lex["arpa_gz"], int(lex["lm_order"]))
    else:
        raise CheckpointError(f"{path}: its lexicon has no word LM ({LEXICON_ARPA_KEY} missing)")
    try:
        return LexiconDecoder(
            tokenizer, lm, lex["beam"], lex["lm_weight"], lex["word_bonus"],
            prune=lex.get("token_prune", TOKEN_PRUNE),  # files exported before it was stored
            blank_penalty=lex.get("blank_penalty", 0.0),  # (and this)
            vocabulary=lex.get("vocabulary", "train"),
            bigrams=lex.get("bigrams", "train"),
            engine=engine,
            arpa=arpa,
        )  # fmt: skip
    except DataError as err:  # the ARPA text does not unpack or parse (nothing else)
        if arpa is None:  # the ARPA text asrkd wrote from the file's JSON tables
            raise
        raise CheckpointError(f"{path}: corrupt lexicon LM in {LEXICON_ARPA_KEY} ({err})") from err


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis, in float32."""
    logits = logits.astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def greedy_ids(log_probs: np.ndarray, blank: int = 0) -> list[int]:
    """Best path of (T', V) scores: argmax per frame, merge repeats, drop blanks."""
    ids, prev = [], None
    for tok in log_probs.argmax(-1).tolist():
        if tok != prev and tok != blank:
            ids.append(tok)
        prev = tok
    return ids


def lengths_dtype(session) -> type:
    """The integer type of a session's feat_lens input: int32 in a sherpa-onnx Moonshine-type
    encoder (asrkd.sherpa_waveform), int64 in every other exported file."""
    types = {i.name: i.type for i in session.get_inputs()}
    return np.int32 if types.get("feat_lens") == "tensor(int32)" else np.int64


class OnnxRecognizer:
    """An exported .onnx file opened once: audio -> log-probs -> text, without PyTorch.

    Attributes: tokenizer, features (FeatureConfig), dims (dict), lexicon (LexiconDecoder or
    None, from the file), format ("onnx" or "onnx-int8").
    """

    def __init__(
        self,
        model_path: str | Path,
        threads: int = 0,
        lexicon: bool = True,
        engine: str | None = None,
    ) -> None:
        """lexicon=False leaves the file's lexicon unread (file_lexicon reads it later); engine:
        who searches it (EvalConfig.lexicon_engine; None: the search the file was exported
        with)."""
        self.model_path = model_path
        loaded = model_without_lexicon(model_path)  # the session without the lexicon's bulk
        try:
            self.session = onnx_session(model_path, threads, loaded[0] if loaded else None)
        except CheckpointError:
            if loaded is None:
                raise
            loaded = None  # e.g. tensors in external files, found beside the path only
            self.session = onnx_session(model_path, threads)
        meta = read_onnx_metadata(self._props(loaded), model_path, lexicon)
        del loaded
        self.tokenizer = Tokenizer.from_json(json.dumps(meta["tokenizer"]))
        self.features = FeatureConfig(**meta["features"])
        self.dims = meta["dims"]
        self.family = meta.get("family") or "conformer"  # files from before the families
        self.format = "onnx-int8" if meta.get("quantized") else "onnx"
        self.lens_dtype = lengths_dtype(self.session)
        self.lexicon = (
            lexicon_from_metadata(meta, self.tokenizer, engine, model_path) if lexicon else None
        )

    def _props(self, loaded: tuple[bytes, dict[str, str]] | None) -> dict[str, str]:
        """The file's metadata, lexicon included: model_without_lexicon's (`loaded`), else the
        session's, which was made from the whole file."""
        return loaded[1] if loaded else self.session.get_modelmeta().custom_metadata_map

    def file_lexicon(self, engine: str | None = None) -> LexiconDecoder | None:
        """The lexicon decoder the file carries (None without one), searched by `engine` (None:
        the file's own); its metadata read from the file again (the session may lack it)."""
        props = self._props(model_without_lexicon(self.model_path))
        meta = read_onnx_metadata(props, self.model_path)
        return lexicon_from_metadata(meta, self.tokenizer, engine, self.model_path)

    def log_probs(self, samples: np.ndarray) -> np.ndarray:
        """(T', V) log-probabilities of mono samples at features.sample_rate."""
        feats = features_np(samples, self.features)
        inputs = {
            "feats": feats[None],
            "feat_lens": np.array([feats.shape[0]], dtype=self.lens_dtype),
        }
        logits, lengths = self.session.run(list(OUTPUT_NAMES), inputs)
        return log_softmax(logits[0, : int(lengths[0])])

    def greedy(self, log_probs: np.ndarray) -> str:
        return self.tokenizer.decode(greedy_ids(log_probs, self.tokenizer.blank_id))

    def __call__(self, samples: np.ndarray) -> str:
        """Text as `asrkd transcribe` gives it: the file's lexicon decoder, else greedy."""
        log_probs = self.log_probs(samples)
        if self.lexicon is not None:
            return self.lexicon.decode(log_probs)
        return self.greedy(log_probs)


def transcribe_onnx_files(
    model_path: str | Path, paths: list[str | Path], threads: int = 0, engine: str | None = None
) -> list[tuple[str, str]]:
    """(path, text) for each audio file, with an exported .onnx file (its lexicon, if it carries
    one, searched by `engine`, None: the search the file was exported with)."""
    recognizer = OnnxRecognizer(model_path, threads, engine=engine)
    if recognizer.lexicon is not None:
        recognizer.lexicon.release_lm()  # it only decodes from here on
    rate = recognizer.features.sample_rate
    return [(str(p), recognizer(load_mono(p, rate))) for p in paths]


@dataclass(frozen=True)
class CutAudio:
    """What scoring needs of a lhotse MonoCut: where its audio is and its transcript."""

    id: str
    path: str
    sampling_rate: int
    start: float
    duration: float
    channel: int
    text: str


def read_cut_manifest(path: str | Path) -> list[CutAudio]:
    """The cuts of a lhotse cut manifest (.jsonl.gz or .jsonl) whose recordings are audio
    files, read with gzip + json; a DataError names the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such cut manifest (run `asrkd prepare` first)")
    opener = gzip.open if path.suffix == ".gz" else open
    cuts = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    cuts.append(_cut_audio(json.loads(line)))
    except (OSError, EOFError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{path}: unreadable cut manifest ({err})") from err
    if not cuts:
        raise DataError(f"{path}: no cuts")
    return cuts


def _cut_audio(cut: dict) -> CutAudio:
    rec = cut["recording"]
    sources = rec["sources"]
    if len(sources) != 1 or sources[0]["type"] != "file" or rec.get("transforms"):
        raise ValueError(f"cut {cut['id']}: only recordings of one audio file are supported")
    channel = cut.get("channel", 0)
    channels = sources[0].get("channels", [0])
    text = " ".join((s.get("text") or "").strip() for s in cut.get("supervisions", []))
    return CutAudio(
        id=cut["id"],
        path=sources[0]["source"],
        sampling_rate=int(rec["sampling_rate"]),
        start=float(cut.get("start", 0.0)),
        duration=float(cut["duration"]),
        channel=channels.index(channel) if channel in channels else 0,
        text=text.strip(),
    )


def load_cut_audio(cut: CutAudio, sample_rate: int) -> np.ndarray:
    """(n_samples,) float32 of the cut's span of its file, at `sample_rate`."""
    first = round(cut.start * cut.sampling_rate)
    n = round(cut.duration * cut.sampling_rate)
    try:
        audio, rate = sf.read(cut.path, start=first, frames=n, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise DataError(f"{cut.path}: unreadable audio ({err})") from err
    return resample_mono(audio[:, min(cut.channel, audio.shape[1] - 1)], rate, sample_rate)


def make_lexicon(
    cfg: EvalConfig, model: OnnxRecognizer, model_path: str | Path
) -> LexiconDecoder | None:
    """As asrkd.evaluation.make_lexicon_decoder for an exported file (asrkd.lexicon.eval_decoder),
    reading cfg.lexicon_cuts without lhotse; a file names no training manifest."""

    def train_lm(order: int) -> WordLM:
        if not cfg.lexicon_cuts:  # the same ConfigError as evaluate's
            training_manifest({}, model_path)
        texts = [c.text for c in read_cut_manifest(cfg.lexicon_cuts)]
        return WordLM.from_texts(texts, order)

    lexicon = eval_decoder(cfg, model.tokenizer, model.lexicon, model_path, train_lm)
    return lexicon.release_lm() if lexicon is not None else None


def decode_manifest(
    model: OnnxRecognizer, cuts: list[CutAudio], lexicon: LexiconDecoder | None
) -> tuple[list[Result], list[Result] | None]:
    """(greedy, lexicon beam search or None) results of every cut, sorted by cut id."""
    greedy, lex = [], []
    for cut in cuts:
        log_probs = model.log_probs(load_cut_audio(cut, model.features.sample_rate))
        ref = normalize_text(cut.text)
        greedy.append((cut.id, ref, model.greedy(log_probs)))
        if lexicon is not None:
            lex.append((cut.id, ref, lexicon.decode(log_probs)))
    return sorted(greedy), (sorted(lex) if lexicon is not None else None)


def evaluate_onnx(
    model_path: str | Path,
    cuts_paths: list[str | Path],
    out_dir: str | Path,
    cfg: EvalConfig,
    measure: bool = True,
) -> dict:
    """`asrkd evaluate` of an exported .onnx file from the cuts' audio: the same output files
    as asrkd.evaluation.evaluate. Latency and memory are measured by asrkd.evaluation when PyTorch
    is installed (its probes collate stored features) and skipped otherwise."""
    out_dir = Path(out_dir)
    model = OnnxRecognizer(model_path, cfg.threads, engine=cfg.lexicon_engine)
    summary: dict = {
        "model": str(model_path),
        "format": model.format,
        "bytes_on_disk": Path(model_path).stat().st_size,
        "dims": model.dims,
        "sets": {},
        "features": "kaldi-native-fbank" if model.features.kind == "fbank" else "numpy",
    }
    lexicon = make_lexicon(cfg, model, model_path)
    summary["decoding"] = cfg.tag
    for path in cuts_paths:
        name = Path(path).name.split(".")[0].removeprefix("cuts_")
        greedy, lex = decode_manifest(model, read_cut_manifest(path), lexicon)
        summary["sets"][name] = write_set(greedy, lex, lexicon, out_dir, name, cfg.tag)
    summary.update(_torch_figures(model_path, cuts_paths, cfg, measure))
    return write_summary(summary, out_dir)


def _torch_figures(model_path, cuts_paths, cfg: EvalConfig, measure: bool) -> dict:
    """Parameters (and latency/memory when `measure`), which need PyTorch: {} without it."""
    try:
        import torch  # noqa: F401
    except ImportError:
        log.info("PyTorch not installed: parameters, latency and memory not measured")
        return {}
    from asrkd.evaluation import measure_costs
    from asrkd.transcribe import OnnxTranscriber

    n_params = OnnxTranscriber(model_path, threads=1, lexicon=False).n_params
    figures: dict = {"n_params": n_params, "bytes_fp32": 4 * n_params}
    if measure and cuts_paths:
        figures.update(measure_costs(model_path, cuts_paths[0], cfg))
    return figures
