"""CUDA: what a GPU run of the Whisper work does (train.device=auto picks the GPU): Whisper-
encoder and Conformer students trained with hidden-state KD from a Whisper teacher's encoder,
the teacher's states computed on the GPU equal to the CPU's, a student's GPU logits equal to
its CPU logits. Skipped without a CUDA device (CI has none); run on a GPU machine with
`pytest -m gpu`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from asrkd.config import FeatureConfig, PrepareConfig, load_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Whisper (d_model 64, 2 encoder blocks: the whisper-test-student's width) saved
    as a Hugging Face folder; hidden-state KD needs no tokenizer."""
    transformers = pytest.importorskip("transformers")
    config = transformers.WhisperConfig(
        vocab_size=64, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=1,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpu_whisper") / "hf"
    transformers.WhisperForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from asrkd.data.librispeech import prepare_librispeech
    from tests.helpers import write_librispeech_tree

    root = tmp_path_factory.mktemp("gpu_corpus")
    corpus = write_librispeech_tree(root, {"train": 40, "dev": 8, "test": 8}, n_speakers=4)
    cfg = PrepareConfig(features=FeatureConfig(kind="whisper"))
    return prepare_librispeech(corpus, ["train", "dev", "test"], root / "out", cfg, False)


def _run(parts: dict[str, Path], out: Path, teacher: Path, preset: str, extra=()) -> Path:
    from asrkd.training import train
    from tests.conftest import tiny_run_overrides

    overrides = [
        *tiny_run_overrides(parts, out, 60),
        f"model.preset={preset}",
        "train.device=cuda",
        "teacher.kind=whisper",
        f"teacher.path={teacher}",
        "distill.strategy=hidden",
        *extra,
    ]
    return train(load_config(None, overrides))


@pytest.mark.parametrize(
    "preset,extra",
    [("whisper-test-student", ("distill.init_from_teacher=true",)), ("tiny", ())],
)
def test_hidden_kd_from_whisper_trains_on_the_gpu(parts, whisper_folder, tmp_path, preset, extra):
    run = _run(parts, tmp_path / "run", whisper_folder, preset, extra)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    from asrkd.data.dataset import collate, load_cuts
    from asrkd.models.checkpoint import load_model

    model, tokenizer = load_model(run / "model.safetensors")
    batch = collate(load_cuts(parts["test"]), tokenizer)
    with torch.inference_mode():
        cpu = model(batch.feats, batch.feat_lens)
        gpu = model.to("cuda")(batch.feats.cuda(), batch.feat_lens.cuda())
    assert torch.equal(cpu.lengths, gpu.lengths.cpu())
    assert (cpu.logits - gpu.logits.cpu()).abs().max() < 1e-3


def test_whisper_teacher_states_on_the_gpu_equal_the_cpu(parts, whisper_folder):
    from asrkd.data.dataset import load_cuts
    from asrkd.distill.teachers import TeacherRequest
    from asrkd.distill.whisper_teacher import WhisperTeacher

    cuts = sorted(load_cuts(parts["test"]), key=lambda c: c.id)[:3]
    audio = [(c.load_audio()[0], c.sampling_rate) for c in cuts]
    lens = torch.tensor([c.num_frames for c in cuts])
    request = TeacherRequest(hidden_layers=(0, 1))
    teacher = WhisperTeacher(whisper_folder, runtime="transformers")
    cpu = teacher(torch.zeros(3, 1, 80), lens, request, audio)
    gpu = teacher.to(torch.device("cuda"))(torch.zeros(3, 1, 80), lens, request, audio)
    for layer in (0, 1):
        assert (cpu.hidden[layer] - gpu.hidden[layer].cpu()).abs().max() < 1e-3
