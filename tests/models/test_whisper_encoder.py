"""Whisper-encoder CTC students: shapes over input lengths (past Whisper's 30 s), equality with
transformers' WhisperEncoder, padding invariance, init from a Whisper, model files, ONNX parity
and a tiny training run on Whisper features."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from asrkd.config import Config, ConfigError, load_config
from asrkd.data.text import Tokenizer
from asrkd.distill.student_init import init_from_whisper
from asrkd.models import FAMILIES, PRESETS, WhisperEncoderCTC, WhisperEncoderDims, build_model
from asrkd.models.checkpoint import load_model, read_checkpoint_meta, save_checkpoint
from asrkd.models.conformer import attention_bias, padding_mask
from asrkd.models.whisper_encoder import output_lengths, sinusoids

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = WhisperEncoderDims(d_model=64, n_heads=4, n_layers=2, ffn_dim=128, dropout=0.0)


def tiny_model(**changes) -> WhisperEncoderCTC:
    torch.manual_seed(0)
    return WhisperEncoderCTC(dataclasses.replace(TINY, **changes)).eval()


@pytest.fixture(scope="module")
def hf_whisper(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random transformers Whisper (d_model 64, 2 encoder blocks) saved with
    save_pretrained and read back with load_whisper, as distill.init_from does."""
    transformers = pytest.importorskip("transformers")
    from asrkd.models.whisper_io import load_whisper

    conf = transformers.WhisperConfig(
        vocab_size=100, num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=32, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hf_whisper") / "whisper"
    transformers.WhisperForConditionalGeneration(conf).save_pretrained(path)
    return load_whisper(path)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 100, 2999, 3000, 3001, 3517])
def test_shapes_over_input_lengths(n: int) -> None:
    model = tiny_model()
    with torch.inference_mode():
        out = model(torch.randn(2, n, 80), torch.tensor([n, max(1, n // 3)]))
    n_out = (n - 1) // 2 + 1
    assert out.logits.shape == (2, n_out, TINY.vocab_size)
    assert out.lengths.tolist() == [n_out, (max(1, n // 3) - 1) // 2 + 1]
    assert torch.equal(model.output_lengths(torch.tensor([n])), output_lengths(torch.tensor([n])))
    assert len(out.hidden_states) == TINY.n_layers
    assert all(h.shape == (2, n_out, TINY.d_model) for h in out.hidden_states)
    assert torch.isfinite(out.logits).all()


def test_positions_extend_whisper_sinusoids_past_30_s() -> None:
    pytest.importorskip("transformers")
    from transformers.models.whisper.modeling_whisper import sinusoids as hf_sinusoids

    model = tiny_model()
    ours = sinusoids(1800, model.inv_timescales)  # 36 s: Whisper stops at 1500
    assert torch.allclose(ours, hf_sinusoids(1800, TINY.d_model), atol=1e-6)


def test_equals_transformers_encoder_on_a_30_s_input(hf_whisper) -> None:
    """All blocks copied: the same hidden states as transformers' WhisperEncoder on the one
    input length it accepts (3000 frames)."""
    student = tiny_model(vocab_size=29)
    init_from_whisper(student, hf_whisper)
    encoder = hf_whisper.get_encoder()
    captured = []
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o)) for layer in
             encoder.layers]  # fmt: skip
    feats = torch.randn(1, 3000, 80)
    with torch.inference_mode():
        ref = encoder(feats.transpose(1, 2)).last_hidden_state
        out = student(feats, torch.tensor([3000]))
    for hook in hooks:
        hook.remove()
    assert torch.allclose(out.hidden_states[0], captured[0], atol=1e-5)
    assert torch.allclose(out.hidden_states[-1], ref, atol=1e-5)  # after the final LayerNorm


def test_shorter_inputs_use_the_first_positions_unpadded(hf_whisper) -> None:
    """T frames -> transformers' own modules on those T frames with positions [0, T'): no
    padding to 30 s."""
    student = tiny_model()
    init_from_whisper(student, hf_whisper)
    enc = hf_whisper.get_encoder()
    feats = torch.randn(1, 457, 80)
    with torch.inference_mode():
        x = torch.nn.functional.gelu(enc.conv1(feats.transpose(1, 2)))
        x = torch.nn.functional.gelu(enc.conv2(x)).transpose(1, 2)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers:
            x = layer(x, None)
        ref = enc.layer_norm(x)
        out = student(feats, torch.tensor([457]))
    assert out.logits.shape[1] == 229
    assert torch.allclose(out.hidden_states[-1], ref, atol=1e-5)


def test_padding_never_changes_valid_frames() -> None:
    model = tiny_model()
    lens = [301, 264, 9, 1]
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(len(lens), max(lens), 80, generator=gen) * 3 + 5  # garbage in padding
    with torch.inference_mode():
        batch = model(feats, torch.tensor(lens))
        for i, n in enumerate(lens):
            alone = model(feats[i : i + 1, :n], torch.tensor([n]))
            m = int(alone.lengths[0])
            assert batch.lengths[i] == m
            assert torch.allclose(batch.logits[i, :m], alone.logits[0], atol=1e-5), i
            assert torch.allclose(batch.hidden_states[0][i, :m], alone.hidden_states[0][0],
                                  atol=1e-5)  # fmt: skip


def test_init_copies_exactly_the_tensors_it_reports(hf_whisper) -> None:
    student = tiny_model(n_layers=1)  # one block from two: the last (evenly_spaced)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = init_from_whisper(student, hf_whisper)
    assert report.layer_map == {0: 1}
    w_state = hf_whisper.get_encoder().state_dict()
    after = student.state_dict()
    assert set(report.copied) | set(report.skipped) == set(after)
    assert report.skipped == ["ctc_head.weight", "ctc_head.bias"]
    for key in report.copied:
        source = key.replace("blocks.0.", "layers.1.")
        assert torch.equal(after[key], w_state[source]), key
    for key in report.skipped:
        assert torch.equal(after[key], before[key]), key
    assert "blocks.0.self_attn.k_proj.weight" in report.copied
    assert "blocks.0.self_attn.k_proj.bias" not in after  # Whisper's k has no bias


def test_init_rejects_a_whisper_of_another_width(hf_whisper) -> None:
    with pytest.raises(ConfigError, match="d_model, heads, ffn_dim"):
        init_from_whisper(tiny_model(d_model=32, n_heads=2), hf_whisper)


def test_a_deeper_student_starts_as_the_whisper_encoder(hf_whisper) -> None:
    """Three blocks from a two-block Whisper: blocks 0-1 copied, block 2 a copy of block 1
    whose out_proj and fc2 are zero, so every output equals the two-block student's; and it
    trains (fc2's gradient is not zero)."""
    deep, flat = tiny_model(n_layers=3, vocab_size=29), tiny_model(vocab_size=29)
    report = init_from_whisper(deep, hf_whisper)
    init_from_whisper(flat, hf_whisper)
    assert report.layer_map == {0: 0, 1: 1, 2: 1}
    deep.ctc_head.load_state_dict(flat.ctc_head.state_dict())
    feats, lens = torch.randn(2, 311, 80), torch.tensor([311, 200])
    with torch.inference_mode():
        a, b = deep(feats, lens), flat(feats, lens)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    assert torch.allclose(a.hidden_states[-1], b.hidden_states[-1], atol=1e-6)
    state = deep.state_dict()
    assert torch.equal(state["blocks.2.fc1.weight"], state["blocks.1.fc1.weight"])
    for key in ("self_attn.out_proj.weight", "self_attn.out_proj.bias", "fc2.weight", "fc2.bias"):
        assert not state[f"blocks.2.{key}"].any(), key
    assert state["blocks.1.fc2.weight"].any()  # (a random Whisper's biases are zero)
    deep.train()
    deep(feats, lens).logits.logsumexp(-1).sum().backward()
    assert deep.blocks[2].fc2.weight.grad.abs().sum() > 0


def test_init_from_needs_no_teacher_and_a_whisper_preset() -> None:
    cfg = load_config(None, ["model.preset=whisper-tiny-enc2", "distill.init_from=some/whisper"])
    assert cfg.teacher.path == "" and cfg.distill.strategies == ("none",)
    load_config(
        None,
        ["model.preset=whisper-tiny-enc2", "distill.init_from=w", "distill.init_from_teacher=true"],
    )  # fmt: skip  (init_from wins)
    with pytest.raises(ConfigError, match="not a Whisper-encoder preset"):
        load_config(None, ["model.preset=tiny", "distill.init_from=some/whisper"])
    assert isinstance(Config().model.preset, str)


def test_presets_and_families() -> None:
    for name in ("whisper-tiny-enc2", "whisper-tiny-enc4", "whisper-tiny-enc5"):
        assert (PRESETS[name].d_model, PRESETS[name].n_heads, PRESETS[name].ffn_dim) == (
            384, 6, 1536)  # fmt: skip
    for name in ("whisper-base-enc2", "whisper-base-enc4", "whisper-base-enc6"):
        assert (PRESETS[name].d_model, PRESETS[name].n_heads, PRESETS[name].ffn_dim) == (
            512, 8, 2048)  # fmt: skip
    assert build_model("tiny", 29, 80, 0.1).family == "conformer"
    assert type(build_model("whisper-tiny-test", 29, 80, 0.1)) is FAMILIES["whisper-encoder"][1]


def test_model_file_names_its_family_and_rebuilds_alone(tmp_path: Path) -> None:
    model = tiny_model()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, Tokenizer(), features={"kind": "whisper"})
    assert read_checkpoint_meta(path)["family"] == "whisper-encoder"
    loaded, _ = load_model(path)
    assert isinstance(loaded, WhisperEncoderCTC) and loaded.dims == model.dims
    feats = torch.randn(1, 3300, 80)
    with torch.inference_mode():
        assert torch.equal(loaded(feats, torch.tensor([3300])).logits,
                           model(feats, torch.tensor([3300])).logits)  # fmt: skip


def test_onnx_export_parity(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript", reason="export tests need asrkd[export]")
    from asrkd.config import ExportConfig
    from asrkd.export import export_model, onnx_session, quantize_file, run_onnx
    from asrkd.transcribe import OnnxTranscriber

    model = tiny_model(d_model=32, n_heads=2, ffn_dim=64)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, Tokenizer(), features={"kind": "whisper"})
    fp32 = export_model(path, tmp_path / "m.onnx", ExportConfig())  # verifies 1e-4 itself
    int8 = tmp_path / "m8.onnx"  # as export_model(quantize=True) makes it, without a 2nd export
    quantize_file(fp32, int8, ExportConfig().quantize_ops)
    assert OnnxTranscriber(fp32).family == "whisper-encoder"
    assert OnnxTranscriber(int8).n_params == model.n_params()
    lens = torch.tensor([3100, 1000, 7])  # one past 30 s, padding filled with garbage
    feats = torch.randn(3, 3100, 80) * 2
    with torch.inference_mode():
        eager = model(feats, lens)
    logits, lengths = run_onnx(onnx_session(fp32, threads=1), feats, lens)
    assert torch.equal(lengths, eager.lengths)
    for i, n in enumerate(lengths.tolist()):
        assert (logits[i, :n] - eager.logits[i, :n]).abs().max() <= 1e-4, i
    # int8, the same graph with its MatMuls quantised (the masks are held to 1e-4 above): a random
    # 32-wide model quantises coarsely and the error of one logit depends on the CPU's int8
    # kernels (at most 0.59 on CI's, 0.68 here), so the file is held to its error over each
    # utterance: 0.15-0.19 of the logits' RMS here
    logits, lengths = run_onnx(onnx_session(int8, threads=1), feats, lens)
    assert torch.equal(lengths, eager.lengths)
    for i, n in enumerate(lengths.tolist()):
        error = logits[i, :n] - eager.logits[i, :n]
        rms = error.pow(2).mean().sqrt() / eager.logits[i, :n].pow(2).mean().sqrt()
        assert rms <= 0.3 and error.abs().max() <= 1.5, (i, rms, error.abs().max())


def test_a_repeated_last_block_adds_depth_but_no_parameter(tmp_path: Path) -> None:
    """dims.repeat_last: the last block applied again to its own output with the same weights;
    the same parameters as without, the model file rebuilds it, and the ONNX file computes it
    (export_model holds the file to the eager model within 1e-4)."""
    plain, repeated = tiny_model(), tiny_model(repeat_last=2)
    repeated.load_state_dict(plain.state_dict())
    assert repeated.n_params() == plain.n_params()
    feats, lens = torch.randn(2, 400, 80), torch.tensor([400, 250])
    with torch.inference_mode():
        x = plain.front(feats, lens, len(plain.blocks))
        mask = padding_mask(output_lengths(lens), x.shape[1])
        bias = attention_bias(mask, x.dtype)
        for _ in range(2):
            x = plain.blocks[-1](x, bias)
        want = plain.ctc_head(plain.layer_norm(x))
        got = repeated(feats, lens)
    for i, n in enumerate(output_lengths(lens).tolist()):
        torch.testing.assert_close(got.logits[i, :n], want[i, :n])
    assert len(got.hidden_states) == repeated.dims.n_layers
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, repeated, Tokenizer(), features={"kind": "whisper"})
    loaded, _ = load_model(path)
    assert loaded.dims.repeat_last == 2
    pytest.importorskip("onnxscript", reason="export tests need asrkd[export]")
    from asrkd.config import ExportConfig
    from asrkd.export import export_model

    export_model(path, tmp_path / "m.onnx", ExportConfig())
    with pytest.raises(ValueError, match="repeat_last"):
        WhisperEncoderDims(repeat_last=-1)
