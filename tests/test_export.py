"""ONNX export: export vs eager parity over input lengths and padded batches, metadata round
trip, int8 quantisation, and transcription from the .onnx file alone."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import sys
from pathlib import Path

import jiwer
import pytest
import torch

from asrkd.cli import main as cli_main
from asrkd.config import ConfigError, EvalConfig, ExportConfig, load_config
from asrkd.data.audio import load_mono
from asrkd.data.dataset import cut_text, load_cuts
from asrkd.data.text import Tokenizer
from asrkd.evaluation import evaluate, measure_memory
from asrkd.export import (
    ExportError,
    export_model,
    onnx_session,
    read_onnx_metadata,
    run_onnx,
    verify_export,
)
from asrkd.lexicon import LexiconDecoder
from asrkd.models import build_model
from asrkd.models.checkpoint import CheckpointError, load_model, read_checkpoint
from asrkd.ondevice import (
    LEXICON_ARPA_KEY,
    OnnxRecognizer,
    lexicon_from_metadata,
    make_lexicon,
    transcribe_onnx_files,
)
from asrkd.transcribe import OnnxTranscriber, fbank, transcribe_files

pytest.importorskip("onnxscript", reason="export tests need the export extra: asrkd[export]")
pytestmark = pytest.mark.usefixtures("one_thread")

FP32_TOLERANCE = 1e-4
INT8_CER = 0.02  # int8 vs eager transcripts (character error rate)
# Single utterances from the shortest the two stride-2 convolutions accept (7 frames -> 1) to
# 10 s, including odd lengths around each subsampling boundary.
LENGTHS = (7, 8, 9, 10, 11, 57, 101, 333, 1000)


@pytest.fixture(scope="module")
def onnx_files(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 and int8 exports of the tiny teacher."""
    out = tmp_path_factory.mktemp("export")
    return {
        "fp32": export_model(tiny_teacher, out / "model.onnx", ExportConfig()),
        "int8": export_model(tiny_teacher, out / "model-int8.onnx", ExportConfig(quantize=True)),
        "int8-lexicon": export_model(
            tiny_teacher,
            out / "model-int8-lexicon.onnx",
            ExportConfig(quantize=True, lexicon_cuts="train", beam=4, lm_weight=0.3),
        ),
    }


@pytest.fixture(scope="module")
def test_audio(prepared_parts: dict[str, Path]) -> list[str]:
    """The flac files of the tiny corpus's test part (10 utterances, ~1-2 s each)."""
    cuts = sorted(load_cuts(prepared_parts["test"]), key=lambda c: c.id)
    return [c.recording.sources[0].source for c in cuts]


def eager_and_onnx(model, session, feats: torch.Tensor, feat_lens: torch.Tensor):
    with torch.inference_mode():
        eager = model(feats, feat_lens)
    return eager, run_onnx(session, feats, feat_lens)


def test_export_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="format"):
        ExportConfig(format="tflite")
    with pytest.raises(ConfigError, match="opset"):
        ExportConfig(opset=24)
    with pytest.raises(ConfigError, match="quantize_ops"):
        ExportConfig(quantize_ops=("LSTM",))
    with pytest.raises(ConfigError, match="quantize_ops"):
        ExportConfig(quantize=True, quantize_ops=())
    with pytest.raises(ConfigError, match="beam"):
        ExportConfig(beam=0)
    cfg = load_config(None, ["quantize=true", "opset=20"], ExportConfig)
    assert cfg.quantize and cfg.opset == 20


def test_parity_over_lengths_and_a_padded_batch(tiny_teacher, onnx_files) -> None:
    model, _ = load_model(tiny_teacher)
    session = onnx_session(onnx_files["fp32"], threads=1)
    gen = torch.Generator().manual_seed(1)
    for n in LENGTHS:
        feats = torch.randn(1, n, model.dims.n_mels, generator=gen) * 3 + 5
        eager, (logits, lengths) = eager_and_onnx(model, session, feats, torch.tensor([n]))
        assert torch.equal(lengths, eager.lengths), n
        assert logits.shape == eager.logits.shape, n
        assert (logits - eager.logits).abs().max().item() <= FP32_TOLERANCE, n
    # A padded batch whose longest utterance is not the first, padding filled with garbage.
    feat_lens = torch.tensor([120, 333, 7, 250])
    feats = torch.randn(4, 333, model.dims.n_mels, generator=gen) * 3 + 5
    eager, (logits, lengths) = eager_and_onnx(model, session, feats, feat_lens)
    assert torch.equal(lengths, eager.lengths)
    for i, n in enumerate(lengths.tolist()):  # valid frames only: padding frames are unused
        diff = (logits[i, :n] - eager.logits[i, :n]).abs().max().item()
        assert diff <= FP32_TOLERANCE, i


def test_metadata_round_trip(tiny_teacher, onnx_files) -> None:
    _, meta = read_checkpoint(tiny_teacher)
    for kind, path in onnx_files.items():
        props = onnx_session(path, threads=1).get_modelmeta().custom_metadata_map
        got = read_onnx_metadata(props, path)
        assert got["dims"] == meta["dims"] and got["tokenizer"] == meta["tokenizer"]
        assert got["features"] == meta["features"]  # a trained model stores its features
        assert got["quantized"] is kind.startswith("int8")
        assert ("lexicon" in got) is kind.endswith("lexicon")
        assert ("asrkd.lexicon_gz" in props) is kind.endswith("lexicon")  # stored zipped
    # A file exported before the lexicon was zipped reads the same; a damaged one is named.
    props = onnx_session(onnx_files["int8-lexicon"], threads=1).get_modelmeta().custom_metadata_map
    packed = json.loads(props["asrkd.lexicon_gz"])
    lexicon = read_onnx_metadata(props)["lexicon"]
    old = {k: v for k, v in props.items() if k != "asrkd.lexicon_gz"}
    old["asrkd.lexicon"] = json.dumps(lexicon)
    assert read_onnx_metadata(old)["lexicon"] == lexicon
    raw = bytearray(base64.b64decode(packed))
    raw[len(raw) // 2] ^= 0xFF  # a flipped byte inside the deflate stream
    flipped = base64.b64encode(bytes(raw)).decode()
    for bad in (packed[: len(packed) // 2], "not base64!", flipped):
        damaged = {**props, "asrkd.lexicon_gz": json.dumps(bad)}
        with pytest.raises(CheckpointError, match="x.onnx: corrupt asrkd metadata"):
            read_onnx_metadata(damaged, "x.onnx")
    with pytest.raises(CheckpointError, match="not an asrkd ONNX export"):
        read_onnx_metadata({"producer": "someone else"}, "x.onnx")
    with pytest.raises(CheckpointError, match="no such model file"):
        OnnxTranscriber(onnx_files["fp32"].with_name("missing.onnx"))


def test_the_session_is_made_without_the_lexicon_metadata(onnx_files, tmp_path) -> None:
    """model_without_lexicon reads a file's metadata as onnxruntime does and serialises the
    model again without the lexicon's entries (the onnx package reads the result as the same
    graph); files without a lexicon are left to onnxruntime; a damaged file is named."""
    import onnx

    from asrkd.ondevice import LEXICON_PROPS, model_without_lexicon

    path = onnx_files["int8-lexicon"]
    stripped, props = model_without_lexicon(path)
    whole = onnx_session(path, threads=1).get_modelmeta().custom_metadata_map
    assert props == whole and any(k in props for k in LEXICON_PROPS)
    original, again = onnx.load(str(path)), onnx.load_from_string(stripped)
    assert again.graph == original.graph and again.opset_import == original.opset_import
    assert {p.key for p in again.metadata_props} == set(props) - set(LEXICON_PROPS)
    recognizer = OnnxRecognizer(path, threads=1)
    assert recognizer.lexicon is not None
    assert not set(recognizer.session.get_modelmeta().custom_metadata_map) & set(LEXICON_PROPS)
    assert recognizer.file_lexicon() is not None  # read from the file again
    assert model_without_lexicon(onnx_files["int8"]) is None  # no lexicon: onnxruntime reads it
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="damaged.onnx: unreadable ONNX model"):
        OnnxRecognizer(damaged, threads=1)


def test_onnx_transcribes_like_the_model_file(tiny_teacher, onnx_files, test_audio) -> None:
    """fp32 .onnx: the same text as the .safetensors file on every test utterance. int8: a
    smaller file whose text stays within INT8_CER of eager (0 on the machine that wrote this
    test; int8 kernels differ between CPUs, e.g. AVX2 and VNNI saturate differently)."""
    eager = transcribe_files(tiny_teacher, test_audio)
    assert all(text for _, text in eager)  # the teacher says something for every utterance
    assert transcribe_files(onnx_files["fp32"], test_audio) == eager
    int8 = transcribe_files(onnx_files["int8"], test_audio)
    assert [p for p, _ in int8] == [p for p, _ in eager]
    cer = jiwer.cer([t for _, t in eager], [t for _, t in int8])
    assert cer <= INT8_CER, (cer, eager, int8)
    assert onnx_files["int8"].stat().st_size < 0.8 * onnx_files["fp32"].stat().st_size


def test_verify_rejects_a_graph_of_other_weights(tiny_teacher, onnx_files) -> None:
    model, _ = load_model(tiny_teacher)
    assert verify_export(onnx_files["fp32"], model, FP32_TOLERANCE) <= FP32_TOLERANCE
    torch.manual_seed(0)
    other = build_model("tiny", model.dims.vocab_size, model.dims.n_mels, 0.0).eval()
    with pytest.raises(ExportError, match="differ from eager"):
        verify_export(onnx_files["fp32"], other, FP32_TOLERANCE)


def test_missing_exporter_packages_say_what_to_install(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(ImportError, match=r"onnxscript.*asrkd\[export\]"):
        export_model(tiny_teacher, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_metadata_is_plain_json(onnx_files) -> None:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_files["fp32"])).metadata_props}
    assert json.loads(props["asrkd.features"])["sample_rate"] == 16000
    assert json.loads(props["asrkd.tokenizer"])["symbols"][0] == "<b>"
    # the exporter's debug metadata (stack traces with local paths) is not shipped
    assert b"stack_trace" not in onnx_files["fp32"].read_bytes()


def test_exported_attention_has_no_nan_guard(onnx_files) -> None:
    """An additive key mask (attention_bias): a boolean one made the exporter guard each score
    tensor with IsNaN/Where, which onnxruntime held in memory. From opset 23 (the default) the
    attention is ONNX's Attention op, its mask given the query axis (exported_mask)."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(onnx_files["fp32"])).graph.node}
    assert "Attention" in ops and "Softmax" not in ops and "IsNaN" not in ops


def test_evaluate_scores_onnx_files_like_the_model_file(
    tiny_teacher, onnx_files, prepared_parts, tmp_path
) -> None:
    """`asrkd evaluate` on exported files: fp32 scores exactly as the .safetensors file, int8
    within INT8_CER; the summary names the format and the network's parameter count."""
    cfg = EvalConfig(decoder="lexicon", beam=4, lm_weight=0.3, threads=1)
    test = [prepared_parts["test"]]
    eager = evaluate(tiny_teacher, test, tmp_path / "eager", cfg, measure=False)
    # the fp32 file carries no lexicon: the same words from the manifest named in the config
    named = dataclasses.replace(cfg, lexicon_cuts=str(prepared_parts["train"]))
    fp32 = evaluate(onnx_files["fp32"], test, tmp_path / "fp32", named, measure=False)
    int8 = evaluate(onnx_files["int8-lexicon"], test, tmp_path / "int8", cfg, measure=True)
    assert fp32["sets"] == eager["sets"]
    assert (fp32["format"], int8["format"], eager["format"]) == ("onnx", "onnx-int8", "safetensors")
    assert int8["n_params"] == eager["n_params"]
    assert int8["bytes_on_disk"] < 0.8 * fp32["bytes_on_disk"]
    assert abs(int8["sets"]["test"]["cer"] - eager["sets"]["test"]["cer"]) <= INT8_CER
    assert int8["speed"]["latency_ms"] > 0 and int8["memory"]["peak_rss_mb"] > 0
    # the memory probe loads the network, then the decoder the file is scored with, and
    # transcribes: its peak holds both
    memory = int8["memory"]
    assert memory["decoder"] == cfg.tag and memory["network_mb"] > 0
    assert memory["model_memory_mb"] >= memory["network_mb"] + memory["decoder_mb"] - 0.5
    # greedy on a file with a lexicon (left unread), and a lexicon for a file without one
    greedy = measure_memory(onnx_files["int8-lexicon"], test[0], EvalConfig(threads=1))
    assert greedy["decoder"] == "greedy" and greedy["model_memory_mb"] > 0
    named_memory = measure_memory(onnx_files["fp32"], test[0], named)
    assert named_memory["decoder"] == named.tag and named_memory["model_memory_mb"] > 0
    # eval.vocabulary and eval.lm_order hold for exported files as for .safetensors ones (the
    # ONNX path used to decode with the training words alone, ignoring wordfreq's).
    mixed = dataclasses.replace(cfg, vocabulary="train+wordfreq:2000", lm_order=2)
    eager_mixed = evaluate(tiny_teacher, test, tmp_path / "em", mixed, measure=False)
    fp32_mixed = evaluate(
        onnx_files["fp32"], test, tmp_path / "fm",
        dataclasses.replace(mixed, lexicon_cuts=str(prepared_parts["train"])), measure=False,
    )  # fmt: skip
    assert fp32_mixed["sets"] == eager_mixed["sets"]
    # the file's stored "train" unigram, mixed; searched in C++, which releases the Python LM
    unigram = dataclasses.replace(mixed, lm_order=1, lexicon_engine="flashlight")
    recognizer = OnnxRecognizer(onnx_files["int8-lexicon"], threads=1)
    stored = recognizer.lexicon.lm.log_probs
    mixed_decoder = make_lexicon(unigram, recognizer, onnx_files["int8-lexicon"])
    assert mixed_decoder.lm is None  # released: it decodes from here on (release_lm)
    lm = mixed_decoder._fast.sorted_words  # the words the search spells
    assert set(stored) < set(lm) and len(lm) > len(stored) + 1000
    # An ONNX file has no run config: without eval.lexicon_cuts or a lexicon inside, say so.
    with pytest.raises(ConfigError, match="names no training manifest"):
        evaluate(onnx_files["int8"], test, tmp_path / "x", cfg, measure=False)


def test_the_file_carries_its_lm_as_arpa_text(onnx_files, test_audio, tmp_path, capsys) -> None:
    """The lexicon's LM travels as zipped ARPA text: the C++ search reads it without building
    the LM's Python tables and spells what a search over those tables spells; files of the
    earlier layout (the tables as JSON) still decode; a damaged LM is named."""
    path = onnx_files["int8-lexicon"]
    props = onnx_session(path, threads=1).get_modelmeta().custom_metadata_map
    meta = read_onnx_metadata(props, path)
    assert "log_probs" not in meta["lexicon"] and meta["lexicon"]["lm_order"] == 1
    assert LEXICON_ARPA_KEY in props  # beside the settings' JSON, as base64 text
    fast = OnnxRecognizer(path, threads=1, engine="flashlight")
    assert fast.lexicon._lm is None  # KenLM read the ARPA text; no Python tables
    slow = OnnxRecognizer(path, threads=1)  # the Python search reads the tables from it
    tables = slow.lexicon.lm
    assert tables is not None and set(tables.log_probs) == set(fast.lexicon.lm.log_probs)
    lex = fast.lexicon
    settings = (lex.beam, lex.lm_weight, lex.word_bonus, lex.prune)
    from_tables = LexiconDecoder(fast.tokenizer, tables, *settings, engine="flashlight")
    # the earlier layout: the LM's tables as JSON beside the settings, no ARPA text
    settings_only = {k: v for k, v in meta["lexicon"].items() if k != "arpa_gz"}
    old_meta = {**meta, "lexicon": {**settings_only, **tables.to_json()}}
    old_layout = lexicon_from_metadata(old_meta, fast.tokenizer)
    for audio in test_audio:
        log_probs = fast.log_probs(load_mono(audio, fast.features.sample_rate))
        assert lex.decode(log_probs) == from_tables.decode(log_probs)
        assert slow.lexicon.decode(log_probs) == old_layout.decode(log_probs)
    # `asrkd transcribe --lexicon-engine flashlight` searches the file's LM in C++
    assert (
        cli_main(["transcribe", str(path), *test_audio[:2], "--lexicon-engine", "flashlight"]) == 0
    )
    printed = capsys.readouterr().out.strip().splitlines()
    expected = transcribe_onnx_files(path, test_audio[:2], engine="flashlight")
    assert printed == [f"{p}\t{t}" for p, t in expected]
    # an ONNX file runs as exported: --precision is refused, naming the file
    assert cli_main(["transcribe", str(path), test_audio[0], "--precision", "bf16"]) != 0
    assert "--precision is for .safetensors models" in capsys.readouterr().err
    # damaged or missing ARPA text: an error naming the file
    packed = props[LEXICON_ARPA_KEY]
    assert meta["lexicon"]["arpa_gz"] == packed

    def pack(raw: bytes) -> str:
        return base64.b64encode(gzip.compress(raw)).decode("ascii")

    not_arpa = (pack(b"\xff\xfe binary \x00"), pack(b"some words, not an ARPA file\n"))
    for bad in (packed[: len(packed) // 2], "not base64!", *not_arpa):
        damaged = {**meta, "lexicon": {**settings_only, "arpa_gz": bad}}
        for engine in ("flashlight", "python"):
            with pytest.raises(CheckpointError, match="x.onnx: corrupt lexicon LM"):
                lexicon_from_metadata(damaged, fast.tokenizer, engine, "x.onnx")
    # an intact LM and a tokenizer the lexicon cannot use: that error, not "corrupt"
    no_space = Tokenizer(tuple(s for s in fast.tokenizer.symbols if s != " "))
    with pytest.raises(ValueError, match="needs a word separator"):
        lexicon_from_metadata(meta, no_space, "flashlight", "x.onnx")
    # the file names the search it was exported with (export's lexicon_engine, here the
    # default); without an engine asked for, that one searches it, as files before it: python
    assert meta["lexicon"]["engine"] == "python" and slow.lexicon.engine == "python"
    as_exported = {**meta, "lexicon": {**meta["lexicon"], "engine": "flashlight"}}
    assert lexicon_from_metadata(as_exported, fast.tokenizer).engine == "flashlight"
    assert lexicon_from_metadata(as_exported, fast.tokenizer, "python").engine == "python"
    before = {**meta, "lexicon": {k: v for k, v in meta["lexicon"].items() if k != "engine"}}
    assert lexicon_from_metadata(before, fast.tokenizer).engine == "python"
    unknown = {**meta, "lexicon": {**meta["lexicon"], "engine": "kenlm"}}
    with pytest.raises(CheckpointError, match="x.onnx: unknown lexicon search 'kenlm'"):
        lexicon_from_metadata(unknown, fast.tokenizer, None, "x.onnx")
    missing = {**meta, "lexicon": settings_only}
    with pytest.raises(CheckpointError, match="x.onnx: its lexicon has no word LM"):
        lexicon_from_metadata(missing, fast.tokenizer, "python", "x.onnx")


def test_a_lexicon_inside_the_file_decodes_transcriptions(
    tiny_teacher, onnx_files, prepared_parts, test_audio
) -> None:
    """export lexicon_cuts=train: `asrkd transcribe` spells only training words, exactly as
    the lexicon decoder with the stored settings does on the same logits."""
    lexicon_model = OnnxTranscriber(onnx_files["int8-lexicon"])
    plain = OnnxTranscriber(onnx_files["int8"])
    assert plain.lexicon is None and lexicon_model.lexicon is not None
    lex = lexicon_model.lexicon
    assert (lex.beam, lex.lm_weight, lex.word_bonus) == (4, 0.3, 1.0)
    train_words = {w for c in load_cuts(prepared_parts["train"]) for w in cut_text(c).split()}
    assert set(lex.lm.log_probs) == train_words
    texts = [t for _, t in transcribe_files(onnx_files["int8-lexicon"], test_audio)]
    assert all(set(t.split()) <= train_words for t in texts)
    for path, text in zip(test_audio, texts):
        feats = fbank(load_mono(path, plain.features.sample_rate), plain.features)
        logits, lengths = plain.forward(feats[None], torch.tensor([feats.shape[0]]))
        log_probs = logits[0, : int(lengths[0])].float().log_softmax(-1).numpy()
        assert lex.decode(log_probs) == text
