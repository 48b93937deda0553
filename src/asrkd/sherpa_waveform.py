"""Whisper-encoder students for sherpa-onnx: the waveform in, Whisper's log-mel computed inside
the graph exactly as training computed it, CTC greedy search inside the graph too, delivered as
sherpa-onnx's Moonshine model type (`OfflineRecognizer.from_moonshine`).

Why Moonshine, not one of sherpa-onnx's CTC types (measured with sherpa-onnx 2.0.1):
- every offline CTC type but one gets its features from sherpa-onnx's kaldi-native-fbank
  (kaldi framing centred 80 samples off Whisper's, pre-emphasis, a 512-point FFT, natural log):
  no graph turns those into Whisper's log-mel.
- the one that passes samples (Omnilingual ASR CTC) first normalises them:
  (x - mean) / sqrt(var + 1e-5). The mean is gone, and Whisper's features of x - mean differ
  from x's in mel bins 0-1 and the last frames by up to ~0.7 on LibriSpeech's offsets of ~1e-4;
  the scale survives only through the 1e-5 (var(y) = v / (v + eps)), and sherpa-onnx sums v in
  float32, which shifts the recovered log-mel by up to 2.5e-3 on test-other. A test student's
  greedy words then matched asrkd's on 66 of 100 test-other utterances: not a delivery.
- Moonshine's preprocessor graph receives the samples untouched (float, [-1, 1], 16 kHz after
  sherpa-onnx's resampler). Its encoder's first output and a token loop are all sherpa-onnx
  reads; so the encoder runs the CTC student and its greedy search, and the "decoder" reads the
  search's tokens back one per step. sherpa-onnx's greedy words are asrkd's by construction.

The four files sherpa-onnx loads (decode.onnx serves as both of its decoders: no cache):
- preprocess.onnx: audio (1, N) float32 -> feats (1, T, F), T = N // 160, Whisper's log-mel of
  asrkd.data.whisper_features.log_mel computed the same way in float64 (reflection before the
  first sample, zeros after the last, periodic Hann, 400-point DFT every 160 samples as a
  matrix product, power, Slaney mel, log10 floored at 1e-10, the maximum over Whisper's 3000
  frames or every frame past 30 s, floor at maximum - 8, (x + 4) / 4): equal to it to float32
  rounding (measured: at most 1 ulp), at any length.
- encode.onnx (encode.int8.onnx): (feats, feat_lens (1,) int32) -> encoder_out (1, L, 1): the
  student's greedy CTC tokens (blank and repeats dropped) as numbers, id + 2 at the frame where
  each starts and 0 elsewhere, padded with zeros to L = 7 T' + 8, because sherpa-onnx stops the
  loop after int(L * 384 / 16000 * 6) tokens (Moonshine's token budget), >= T' + 1 here. Also
  logits (the log-probs, (1, T', V)) and lengths (1,): asrkd's names, so `asrkd transcribe` runs
  this file as any exported model (features from numpy).
- decode.onnx: (tokens (1, 1) int32, encoder_out, seq_len (1,) int32) -> logits (1, 1, V + 2)
  pointing at the seq_len-th token, or at </s> (2) after the last; <s> is 1.
- tokens.txt: asrkd's symbols at id + 2 ("▁" for a space), <blk> 0, <s> 1, </s> 2.

Dimension legend: N samples, T = N // 160 feature frames, T' output frames, F mel bins,
V vocabulary (blank 0), L encoder_out frames.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from asrkd.config import ExportConfig
from asrkd.data import whisper_features as wf
from asrkd.models import CTCModel

N_BINS = wf.N_FFT // 2 + 1  # 201 FFT bins, 0 to 8 kHz
HALF = wf.N_FFT // 2  # 200: frames are centred on their sample
MIN_SAMPLES = 1120  # 7 frames: the shortest input the graphs are exported for
SOS, EOS = 1, 2  # sherpa-onnx's Moonshine decoder: fixed start and end token ids
TOKEN_OFFSET = 3 - 1  # asrkd's id 1 (its first non-blank) -> 3, after <blk>, <s>, </s>
BUDGET = 7  # encoder_out frames per output frame: 7 * 384 / 16000 * 6 = 1.008 tokens
ONE_HOT = 10.0  # the decoder's logit for the token it points at (0 elsewhere)
PREPROCESS, ENCODE, DECODE = "preprocess.onnx", "encode.onnx", "decode.onnx"
ENCODER_OUTPUTS = ("encoder_out", "logits", "lengths")


def encoder_file_name(quantize: bool) -> str:
    return "encode.int8.onnx" if quantize else ENCODE


class WhisperLogMelGraph(nn.Module):
    """audio (1, N) float32 -> feats (1, N // 160, F) float32: Whisper's log-mel exactly as
    asrkd.data.whisper_features.log_mel computes it (float64 inside)."""

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        t, k = np.arange(wf.N_FFT), np.arange(N_BINS)
        window = np.hanning(wf.N_FFT + 1)[:-1]  # periodic Hann, as log_mel
        angle = 2 * np.pi * np.outer(t, k) / wf.N_FFT
        dft = np.concatenate([np.cos(angle), -np.sin(angle)], axis=1) * window[:, None]
        self.register_buffer("dft", torch.tensor(dft))  # (N_FFT, 2 bins) float64
        self.register_buffer("mel", torch.tensor(wf.mel_filters(n_mels)))  # (N_BINS, F)

    def forward(self, audio: Tensor) -> Tensor:
        x = audio[0].double()
        n = x.shape[0]
        n_seen = (n + HALF + wf.HOP_LENGTH - 1) // wf.HOP_LENGTH  # frames that see audio
        zeros = x.new_zeros((n_seen - 1) * wf.HOP_LENGTH + HALF - n)
        padded = torch.cat([x[1 : HALF + 1].flip(0), x, zeros])
        starts = torch.arange(n_seen)[:, None] * wf.HOP_LENGTH
        spec = padded[starts + torch.arange(wf.N_FFT)[None, :]] @ self.dft  # (n_seen, 2 bins)
        power = spec[:, :N_BINS] ** 2 + spec[:, N_BINS:] ** 2
        log_spec = torch.log10(torch.clamp(power @ self.mel, min=wf.MEL_FLOOR))
        # Whisper's maximum: over its 3000 frames, or every frame for audio past 30 s
        n_total = torch.ones_like(x).sum()  # N as a tensor (no shape guard in the export)
        seen = (torch.arange(n_seen) < wf.N_FRAMES) | (n_total > wf.N_SAMPLES)
        top = torch.where(seen[:, None], log_spec, -torch.inf).max()
        out = torch.maximum(log_spec[: n // wf.HOP_LENGTH], top - wf.LOG_RANGE)
        return ((out + 4.0) / 4.0).float()[None]


class GreedyEncoder(nn.Module):
    """(feats (1, T, F), feat_lens (1,) int32) -> (encoder_out (1, 7 T' + 8, 1), log-probs
    (1, T', V), lengths (1,)): the student and its greedy CTC search (blank 0)."""

    def __init__(self, model: CTCModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model(feats, feat_lens.long())
        log_probs = out.logits.log_softmax(-1)
        ids = log_probs[0].argmax(-1)  # (T',)
        prev = torch.cat([ids.new_zeros(1), ids[:-1]])  # blank before the first frame
        starts = (ids != 0) & (ids != prev)
        tokens = torch.where(starts, ids + TOKEN_OFFSET, 0).float()
        padded = torch.cat([tokens, tokens.new_zeros((BUDGET - 1) * tokens.shape[0] + 8)])
        return padded[None, :, None], log_probs, out.lengths


def decoder_graph(vocab_size: int, opset: int):
    """onnx ModelProto of decode.onnx for a student of `vocab_size` units (see the module)."""
    from onnx import TensorProto, helper

    n_out = vocab_size + TOKEN_OFFSET
    ids = helper.make_tensor("ids", TensorProto.FLOAT, [n_out], list(range(n_out)))
    consts = {"zero": 0.0, "eos": float(EOS), "one_hot": ONE_HOT}
    inits = [ids] + [helper.make_tensor(k, TensorProto.FLOAT, [], [v]) for k, v in consts.items()]
    inits.append(helper.make_tensor("shape", TensorProto.INT64, [3], [1, 1, n_out]))
    inits.append(helper.make_tensor("flat", TensorProto.INT64, [1], [-1]))
    inits.append(helper.make_tensor("axis", TensorProto.INT64, [], [0]))
    node = helper.make_node
    nodes = [
        node("Reshape", ["encoder_out", "flat"], ["vals"]),  # (L,)
        node("Greater", ["vals", "zero"], ["is_token"]),
        node("Cast", ["is_token"], ["is_token_f"], to=TensorProto.FLOAT),
        node("CumSum", ["is_token_f", "axis"], ["rank"]),  # 1 at the first token, 2, ...
        node("Cast", ["seq_len"], ["step"], to=TensorProto.FLOAT),  # 1 at <s>
        node("Equal", ["rank", "step"], ["at_rank"]),
        node("And", ["at_rank", "is_token"], ["here"]),
        node("Where", ["here", "vals", "zero"], ["picked"]),
        node("ReduceSum", ["picked"], ["token"], keepdims=0),  # 0 past the last token
        node("Equal", ["token", "zero"], ["done"]),
        node("Where", ["done", "eos", "token"], ["next"]),
        node("Equal", ["ids", "next"], ["hot"]),
        node("Cast", ["hot"], ["hot_f"], to=TensorProto.FLOAT),
        node("Mul", ["hot_f", "one_hot"], ["scores"]),
        node("Reshape", ["scores", "shape"], ["logits"]),
    ]
    inputs = [
        helper.make_tensor_value_info("tokens", TensorProto.INT32, [1, 1]),
        helper.make_tensor_value_info("encoder_out", TensorProto.FLOAT, [1, "L", 1]),
        helper.make_tensor_value_info("seq_len", TensorProto.INT32, [1]),
    ]
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, n_out])
    graph = helper.make_graph(nodes, "asrkd_ctc_token_reader", inputs, [output], inits)
    # IR 10, as the exporter writes: onnx's own default (14) is newer than sherpa-onnx's runtime
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def example_audio(seconds: float = 2.3) -> Tensor:
    """(1, N) deterministic noise with a tone and an offset."""
    gen = np.random.default_rng(0)
    n = int(seconds * wf.SAMPLE_RATE)
    x = 0.05 * gen.standard_normal(n) + 0.1 * np.sin(np.arange(n) * 0.07) + 0.003
    return torch.from_numpy(x.astype(np.float32))[None]


def preprocess_program(n_mels: int, opset: int):
    """torch.onnx.ONNXProgram of preprocess.onnx (N dynamic)."""
    samples = torch.export.Dim("samples", min=MIN_SAMPLES)
    from asrkd.export import onnx_program

    return onnx_program(
        WhisperLogMelGraph(n_mels), (example_audio(),), ("audio",), ("feats",),
        {"audio": {1: samples}}, opset,
    )  # fmt: skip


def encoder_program(model: CTCModel, opset: int):
    """torch.onnx.ONNXProgram of encode.onnx (T dynamic)."""
    feats = WhisperLogMelGraph(model.dims.n_mels)(example_audio())
    lens = torch.tensor([feats.shape[1]], dtype=torch.int32)
    time = torch.export.Dim("time", min=MIN_SAMPLES // wf.HOP_LENGTH)
    from asrkd.export import onnx_program

    return onnx_program(
        GreedyEncoder(model), (feats, lens), ("feats", "feat_lens"), ENCODER_OUTPUTS,
        {"feats": {1: time}, "feat_lens": None}, opset,
    )  # fmt: skip


def run_folder(folder: str | Path, audio: np.ndarray, quantize: bool = False) -> list[int]:
    """The token ids sherpa-onnx's Moonshine loop reads from the folder's graphs for `audio`
    (onnxruntime; asrkd's ids, blank-free): what the files promise, checked without sherpa."""
    from asrkd.ondevice import onnx_session

    folder = Path(folder)
    pre = onnx_session(folder / PREPROCESS, threads=1)
    enc = onnx_session(folder / encoder_file_name(quantize), threads=1)
    dec = onnx_session(folder / DECODE, threads=1)
    (feats,) = pre.run(None, {"audio": np.asarray(audio, dtype=np.float32)[None]})
    lens = np.array([feats.shape[1]], dtype=np.int32)
    encoder_out = enc.run(["encoder_out"], {"feats": feats, "feat_lens": lens})[0]
    max_len = int(encoder_out.shape[1] * 384 / 16000.0 * 6)  # sherpa-onnx's budget
    tokens, token = [], SOS
    for step in range(1, max_len + 1):
        inputs = {
            "tokens": np.array([[token]], dtype=np.int32),
            "encoder_out": encoder_out,
            "seq_len": np.array([step], dtype=np.int32),
        }
        token = int(dec.run(None, inputs)[0].argmax())
        if token == EOS:
            break
        tokens.append(token - TOKEN_OFFSET)
    return tokens


def verify_graphs(folder: Path, model: CTCModel, tolerance: float) -> float:
    """Max abs difference between the fp32 folder's preprocess.onnx features and log_mel's, and
    between its encoder's log-probs and eager PyTorch's, on a 2.3-s and a 31-s example; the
    decoder loop must give the eager greedy tokens. ExportError otherwise."""
    from asrkd.export import ExportError
    from asrkd.ondevice import greedy_ids, onnx_session

    pre = onnx_session(folder / PREPROCESS, threads=1)
    enc = onnx_session(folder / ENCODE, threads=1)
    worst = 0.0
    for seconds in (2.3, 31.0):
        audio = example_audio(seconds).numpy()
        (feats,) = pre.run(None, {"audio": audio})
        worst = max(worst, float(np.abs(feats[0] - wf.log_mel(audio[0], model.dims.n_mels)).max()))
        lens = np.array([feats.shape[1]], dtype=np.int32)
        log_probs = enc.run(["logits"], {"feats": feats, "feat_lens": lens})[0]
        with torch.inference_mode():
            eager = model(torch.from_numpy(feats), torch.from_numpy(lens).long())
        eager_lp = eager.logits.log_softmax(-1).numpy()
        worst = max(worst, float(np.abs(log_probs - eager_lp).max()))
        if run_folder(folder, audio[0]) != greedy_ids(eager_lp[0]):
            raise ExportError("the exported token loop does not give eager greedy tokens")
    if not worst <= tolerance:
        raise ExportError(f"exported graphs differ from eager by {worst:.3g} > {tolerance:g}")
    return worst


def export_moonshine(
    model_path: str | Path,
    out_dir: str | Path,
    cfg: ExportConfig,
    extra_metadata: dict[str, str] | None = None,
) -> list[Path]:
    """Write preprocess.onnx, encode.onnx (cfg.quantize: encode.int8.onnx, int8 student
    weights) and decode.onnx of the Whisper-encoder model file at `model_path` into `out_dir`
    (each atomically, after `cfg.verify`); returns their paths."""
    from asrkd.export import (
        lexicon_metadata,
        load_for_export,
        onnx_metadata,
        quantize_file,
        strip_debug_info,
    )
    from asrkd.models.checkpoint import atomic_write

    model, meta = load_for_export(model_path)
    out_dir = Path(out_dir)
    names = (PREPROCESS, encoder_file_name(cfg.quantize), DECODE)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pre = preprocess_program(model.dims.n_mels, cfg.opset)
        enc = encoder_program(model, cfg.opset)
        for program in (pre, enc):
            strip_debug_info(program.model)
            program.model.metadata_props.update(extra_metadata or {})
        lexicon = lexicon_metadata(cfg, meta, model_path)
        enc.model.metadata_props.update(onnx_metadata(meta, cfg.quantize, lexicon))
        pre.save(str(tmp / PREPROCESS), external_data=False)
        enc.save(str(tmp / ENCODE), external_data=False)
        if cfg.quantize:
            quantize_file(tmp / ENCODE, tmp / names[1], cfg.quantize_ops, cfg.quantize_per_channel)
        import onnx

        onnx.save(decoder_graph(model.dims.vocab_size, cfg.opset), str(tmp / DECODE))
        if cfg.verify:
            verify_graphs(tmp, model, cfg.verify_tolerance)
        for name in names:
            atomic_write(out_dir / name, lambda dst, src=tmp / name: shutil.copyfile(src, dst))
    return [out_dir / name for name in names]
