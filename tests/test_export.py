"""ONNX export: export vs eager parity over input lengths and padded batches, metadata round
trip, int8 quantisation, and transcription from the .onnx file alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jiwer
import pytest
import torch

from asrkd.config import ConfigError, ExportConfig, load_config
from asrkd.data.dataset import load_cuts
from asrkd.export import (
    ExportError,
    export_model,
    onnx_session,
    read_onnx_metadata,
    run_onnx,
    verify_export,
)
from asrkd.models import build_model
from asrkd.models.checkpoint import CheckpointError, load_model, read_checkpoint
from asrkd.transcribe import OnnxTranscriber, transcribe_files

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
        ExportConfig(opset=23)
    with pytest.raises(ConfigError, match="quantize_ops"):
        ExportConfig(quantize_ops=("LSTM",))
    with pytest.raises(ConfigError, match="quantize_ops"):
        ExportConfig(quantize=True, quantize_ops=())
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
        assert got["quantized"] is (kind == "int8")
    with pytest.raises(CheckpointError, match="not an asrkd ONNX export"):
        read_onnx_metadata({"producer": "someone else"}, "x.onnx")
    with pytest.raises(CheckpointError, match="no such model file"):
        OnnxTranscriber(onnx_files["fp32"].with_name("missing.onnx"))


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
