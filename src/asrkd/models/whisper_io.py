"""Pretrained Whisper weights, read into transformers' Whisper classes.

`load_whisper(path)` takes a Hugging Face Whisper folder (``save_pretrained``) or Hub id, or a
CTranslate2 Whisper folder (the format faster-whisper loads: ``model.bin``, ``config.json``,
``tokenizer.json``), and returns a ``transformers.WhisperForConditionalGeneration`` in fp32 and
eval mode, with a generation config that `generate` can use. Needs ``asrkd[whisper]``.

A CTranslate2 ``model.bin`` is the layout ``ctranslate2/specs/model_spec.py`` writes (binary
version 6): a header (version, spec name, spec revision), then per variable its name, rank, dims,
dtype id and raw bytes, then aliases (name -> name of an identical variable). Attention weights are
fused there: encoder and decoder self-attention ``linear_0`` is [Q; K; V] (K has no bias, stored as
zeros), cross-attention ``linear_0`` is Q and ``linear_1`` is [K; V]; int8 weights come with a
per-row ``weight_scale`` (w = q / scale).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

N_SAMPLES_30S = 480000  # 30 s at 16 kHz: the window Whisper was trained on
HOP_LENGTH = 160  # 10 ms: 100 log-mel frames per second, 50 encoder frames per second
# dtype ids of model_spec._dtype_to_type_id, in order; bfloat16 is read through torch
CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class WhisperFormatError(ValueError):
    """A file that should hold Whisper weights does not; the message names it."""


def is_ct2_folder(path: str | Path) -> bool:
    """A CTranslate2 model folder: a ``model.bin`` beside a ``config.json``."""
    path = Path(path)
    return (path / "model.bin").is_file()


def read_ct2_model(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, {variable name: array}) of a CTranslate2 ``model.bin``, aliases resolved."""
    path = Path(path)
    data = memoryview(path.read_bytes())
    pos = 0

    def take(fmt: str):
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("<H")
        text = bytes(data[pos : pos + n - 1]).decode("utf-8")  # n counts the trailing NUL
        pos += n
        return text

    try:
        version = take("<I")
        if version < 5:
            raise WhisperFormatError(f"{path}: CTranslate2 binary version {version} is too old")
        spec, _revision, n_vars = string(), take("<I"), take("<I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(n_vars):
            name = string()
            dims = [take("<I") for _ in range(take("<B"))]
            dtype, n_bytes = CT2_DTYPES[take("<B")], take("<I")
            if pos + n_bytes > len(data):
                raise WhisperFormatError(f"{path}: ends inside variable {name}")
            if dtype == "bfloat16":
                raw = bytearray(data[pos : pos + n_bytes])
                flat = torch.frombuffer(raw, dtype=torch.bfloat16).float().numpy()
            else:  # a view of the file's bytes, no copy
                flat = np.frombuffer(data, dtype, n_bytes // np.dtype(dtype).itemsize, pos)
            pos += n_bytes
            variables[name] = flat.reshape(dims)
        for _ in range(take("<I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
    except (struct.error, IndexError, UnicodeDecodeError) as err:
        raise WhisperFormatError(f"{path}: not a complete CTranslate2 model.bin ({err})") from err
    return spec, variables


def _weight(v: dict[str, np.ndarray], scope: str) -> Tensor:
    """A linear/conv weight in fp32, int8 weights dequantised with their per-row scale."""
    w = torch.from_numpy(np.array(v[f"{scope}/weight"], dtype=np.float32))
    scale = v.get(f"{scope}/weight_scale")
    if scale is not None and v[f"{scope}/weight"].dtype == np.int8:
        w = w / torch.from_numpy(np.array(scale, dtype=np.float32)).reshape(
            -1, *[1] * (w.dim() - 1)
        )
    return w


def _t(v: dict[str, np.ndarray], name: str) -> Tensor:
    return torch.from_numpy(np.array(v[name], dtype=np.float32))


def _layer_norm(v, scope: str, prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}.weight": _t(v, f"{scope}/gamma"), f"{prefix}.bias": _t(v, f"{scope}/beta")}


def _linear(v, scope: str, prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}.weight": _weight(v, scope), f"{prefix}.bias": _t(v, f"{scope}/bias")}


def _split(v, scope: str, prefixes: list[str]) -> dict[str, Tensor]:
    """A fused linear ([Q; K; V] or [K; V]) into transformers' separate projections; K has none
    of its own bias in transformers (CT2 stores zeros there)."""
    weights = _weight(v, scope).chunk(len(prefixes))
    biases = _t(v, f"{scope}/bias").chunk(len(prefixes))
    out = {}
    for prefix, w, b in zip(prefixes, weights, biases):
        out[f"{prefix}.weight"] = w
        if not prefix.endswith("k_proj"):
            out[f"{prefix}.bias"] = b
    return out


def _block(v: dict[str, np.ndarray], src: str, dst: str) -> dict[str, Tensor]:
    """The self-attention (CT2 fuses Q, K, V) and feed-forward parts of one encoder or decoder
    block, CT2 name prefix `src` -> transformers prefix `dst`."""
    sd = _split(v, f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{x}_proj" for x in "qkv"])
    sd.update(_linear(v, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj"))
    sd.update(_layer_norm(v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
    sd.update(_linear(v, f"{src}/ffn/linear_0", f"{dst}.fc1"))
    sd.update(_linear(v, f"{src}/ffn/linear_1", f"{dst}.fc2"))
    sd.update(_layer_norm(v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"))
    return sd


def _state_dict(v: dict[str, np.ndarray], n_enc: int, n_dec: int) -> dict[str, Tensor]:
    """transformers' WhisperForConditionalGeneration state dict from CT2 variables."""
    sd: dict[str, Tensor] = {}
    for conv in ("conv1", "conv2"):
        sd.update(_linear(v, f"encoder/{conv}", f"model.encoder.{conv}"))
    sd["model.encoder.embed_positions.weight"] = _t(v, "encoder/position_encodings/encodings")
    sd.update(_layer_norm(v, "encoder/layer_norm", "model.encoder.layer_norm"))
    for i in range(n_enc):
        sd.update(_block(v, f"encoder/layer_{i}", f"model.encoder.layers.{i}"))
    sd["model.decoder.embed_tokens.weight"] = _t(v, "decoder/embeddings/weight")
    sd["model.decoder.embed_positions.weight"] = _t(v, "decoder/position_encodings/encodings")
    sd.update(_layer_norm(v, "decoder/layer_norm", "model.decoder.layer_norm"))
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        sd.update(_block(v, src, dst))
        sd.update(_linear(v, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj"))
        kv = [f"{dst}.encoder_attn.{x}_proj" for x in "kv"]
        sd.update(_split(v, f"{src}/attention/linear_1", kv))
        sd.update(_linear(v, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj"))
        sd.update(_layer_norm(v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm"))
    return sd


def special_token_ids(tokenizer_json: str | Path) -> dict[str, int]:
    """Whisper's special tokens (``<|en|>``, ``<|notimestamps|>``, ...) -> id, from the
    tokenizer.json of a CT2 folder."""
    tokens = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))["added_tokens"]
    return {t["content"]: int(t["id"]) for t in tokens}


def _count_layers(v: dict[str, np.ndarray], side: str) -> int:
    return len({k.split("/")[1] for k in v if re.match(rf"{side}/layer_\d+/", k)})


def ct2_whisper_config(folder: Path, v: dict[str, np.ndarray]):
    """(WhisperConfig, GenerationConfig) of a CT2 folder: sizes from the tensors, suppressed ids
    from its config.json, special ids from its tokenizer.json."""
    from transformers import GenerationConfig, WhisperConfig

    ct2 = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    ids = special_token_ids(folder / "tokenizer.json")
    n_vocab, d_model = v["decoder/embeddings/weight"].shape
    n_enc, n_dec = _count_layers(v, "encoder"), _count_layers(v, "decoder")
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=int(n_vocab),
        num_mel_bins=int(v["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        tie_word_embeddings=True,
    )
    multilingual = n_vocab >= 51865  # the .en models have one token fewer
    gen = GenerationConfig(
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
        max_length=config.max_target_positions,
        suppress_tokens=list(ct2.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2.get("suppress_ids_begin", [])),
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=multilingual,
        alignment_heads=ct2.get("alignment_heads"),
    )
    if multilingual:  # transformers detects the language whenever lang_to_id is present
        names = {i: name for name, i in ids.items()}
        gen.lang_to_id = {names[i]: i for i in ct2.get("lang_ids", []) if i in names}
        gen.task_to_id = {t: ids[f"<|{t}|>"] for t in ("transcribe", "translate")}
    return config, gen


def load_ct2_whisper(folder: str | Path):
    """WhisperForConditionalGeneration (fp32) with the weights of a CTranslate2 Whisper folder."""
    from transformers import WhisperForConditionalGeneration

    folder = Path(folder)
    for name in ("config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            raise WhisperFormatError(f"{folder}: a CTranslate2 Whisper folder needs {name}")
    spec, v = read_ct2_model(folder / "model.bin")
    if spec != "WhisperSpec":
        raise WhisperFormatError(f"{folder / 'model.bin'}: a {spec}, not a Whisper model")
    config, gen = ct2_whisper_config(folder, v)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    sd = _state_dict(v, config.encoder_layers, config.decoder_layers)
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise WhisperFormatError(
            f"{folder}: weights do not fit transformers' Whisper (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    model.tie_weights()
    model.generation_config = gen
    return model.float().eval()


def whisper_config(path: str | Path):
    """(WhisperConfig, GenerationConfig) of a CT2 folder, HF folder or Hub id, without building
    the fp32 model (a CT2 model.bin is read, as views of its bytes, for its tensor shapes)."""
    from transformers import GenerationConfig, WhisperConfig

    if is_ct2_folder(path):
        return ct2_whisper_config(Path(path), read_ct2_model(Path(path) / "model.bin")[1])
    try:
        config = WhisperConfig.from_pretrained(str(path))
    except OSError as err:
        raise FileNotFoundError(f"{path}: neither a Whisper folder nor a Hub id ({err})") from err
    try:
        return config, GenerationConfig.from_pretrained(str(path))
    except OSError:
        return config, GenerationConfig.from_model_config(config)


def load_whisper(path: str | Path):
    """A transformers WhisperForConditionalGeneration (fp32, eval mode) from an HF folder or
    Hub id, or from a CTranslate2 folder."""
    try:
        from transformers import WhisperForConditionalGeneration
    except ImportError as err:
        raise ImportError("Whisper needs transformers: pip install 'asrkd[whisper]'") from err
    if is_ct2_folder(path):
        return load_ct2_whisper(path)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(str(path))
    except OSError as err:
        raise FileNotFoundError(f"{path}: neither a Whisper folder nor a Hub id ({err})") from err
    return model.float().eval()


def whisper_fingerprint(path: str | Path) -> str:
    """A hash of a local folder's files (names and contents; hidden entries skipped), or of
    ``<Hub id>@<revision>`` for a Hub id (its revision as the local Hub cache resolves it)."""
    root = Path(path)
    if root.is_dir():
        from asrkd.distill.teachers import file_sha256

        names = sorted(
            p.relative_to(root)
            for p in root.rglob("*")
            if p.is_file() and not any(x.startswith(".") for x in p.relative_to(root).parts)
        )
        listing = "".join(f"{name}:{file_sha256(root / name)}\n" for name in names)
    else:
        from transformers import WhisperConfig

        revision = getattr(WhisperConfig.from_pretrained(str(path)), "_commit_hash", None)
        listing = f"{path}@{revision}"
    return hashlib.sha256(f"whisper\n{listing}".encode()).hexdigest()
