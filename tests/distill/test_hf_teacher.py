"""teacher.kind=hf-ctc: a Hugging Face CTC recogniser as the teacher of sequence-level KD. The
model is a tiny randomly initialised wav2vec 2.0 saved by the test (no download), so its
transcripts are arbitrary but deterministic: the tests check that each cached transcript is
exactly what transformers gives for that utterance's audio, that a student trains on them
(untranscribed audio included), and that what such a teacher cannot give is refused clearly.
Skipped without the `hf` extra (transformers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lhotse import CutSet

from asrkd.config import ConfigError, load_config
from asrkd.data.text import normalize_text
from asrkd.distill.cache import build_cache
from asrkd.distill.teachers import HFCTCTeacher, TeacherRequest
from asrkd.training import Trainer
from tests.conftest import tiny_run_overrides

transformers = pytest.importorskip("transformers")

LETTERS = "etaonrishdlfcmugypwbvkxjqz'"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as `save_pretrained` writes it: a 2-layer wav2vec 2.0 CTC model and its
    processor (feature extractor + character tokenizer)."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    folder = tmp_path_factory.mktemp("hf_teacher")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    vocab.update({c.upper(): 5 + i for i, c in enumerate(LETTERS)})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True
    )
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16, 16),
        conv_stride=(5, 4, 4, 4),  # 320 samples: 20 ms frames, as the real models
        conv_kernel=(10, 8, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        pad_token_id=0,
    )
    model = Wav2Vec2ForCTC(config)
    with torch.no_grad():  # arbitrary but varied transcripts: the blank rarely wins
        model.lm_head.bias[0] = -3.0
    model.save_pretrained(folder)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def reference_transcript(folder: Path, samples: np.ndarray) -> str:
    """What transformers' own classes give for one utterance, normalised like asrkd's text."""
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    processor = Wav2Vec2Processor.from_pretrained(folder)
    model = Wav2Vec2ForCTC.from_pretrained(folder).eval()
    values = processor(samples, sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():
        ids = model(values).logits.argmax(-1)
    return normalize_text(processor.batch_decode(ids)[0])


def test_cached_transcripts_are_the_models_own(prepared_parts, hf_dir, tmp_path) -> None:
    teacher = HFCTCTeacher(hf_dir)
    cache = build_cache(
        teacher,
        prepared_parts["dev"],
        TeacherRequest(transcripts=True),
        cache_root=tmp_path / "cache",
        batch_seconds=20.0,  # several utterances per call: the audio must follow the cut ids
        progress=False,
    )
    cuts = CutSet.from_file(prepared_parts["dev"])
    assert set(cache.texts) == set(cuts.ids)
    assert sum(bool(t) for t in cache.texts.values()) >= len(cuts) // 2  # not all empty
    for cut in list(cuts)[:4]:
        expected = reference_transcript(hf_dir, cut.load_audio()[0])
        assert cache.texts[cut.id] == expected
    assert set("".join(cache.texts.values())) <= set(LETTERS + " ")
    # the same folder gives the same key: the cache is reused, not rebuilt
    again = build_cache(
        HFCTCTeacher(hf_dir),
        prepared_parts["dev"],
        TeacherRequest(transcripts=True),
        cache_root=tmp_path / "cache",
        progress=False,
    )
    assert again.key == cache.key and again.texts == cache.texts


def test_resampled_audio_gives_the_same_kind_of_transcript(hf_dir) -> None:
    teacher = HFCTCTeacher(hf_dir)
    samples = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    at_8k = samples[::2].copy()
    assert isinstance(teacher.transcribe(at_8k, 8000), str)  # resampled to 16 kHz, no error
    assert teacher.transcribe(samples, 16000) == reference_transcript(hf_dir, samples)


def hf_overrides(parts, hf: Path, tmp_path: Path, extra: list[str]) -> list[str]:
    return tiny_run_overrides(parts, tmp_path / "run", 40) + [
        "teacher.kind=hf-ctc",
        f"teacher.path={hf}",
        f"teacher.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]


def test_sequence_kd_from_a_hf_teacher_trains_on_untranscribed_audio(
    prepared_parts, hf_dir, tmp_path
) -> None:
    cfg = load_config(
        None,
        hf_overrides(
            prepared_parts,
            hf_dir,
            tmp_path,
            ["distill.strategy=sequence", "data.labelled_fraction=0.5"],
        ),
    )
    trainer = Trainer(cfg)
    seen = {"unlabelled": 0}
    step = trainer.step

    def counting_step(batch, weight=1.0):
        seen["unlabelled"] += int((~batch.labelled).sum())
        return step(batch, weight)

    trainer.step = counting_step
    trainer.run()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["strategy"] == "sequence" and summary["steps"] == 40
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["kd_seq"]) for r in rows if "kd_seq" in r)
    assert seen["unlabelled"] > 0
    (index,) = (tmp_path / "cache").glob("*/index.json")
    texts = json.loads(index.read_text())["texts"]
    assert len(texts) == len(CutSet.from_file(prepared_parts["train"]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["distill.strategy=logit"], "frame logits"),
        (["distill.strategy=hidden"], "exposes its layers"),
        (["distill.strategy=sequence", "teacher.cache=false"], "teacher.cache=true"),
    ],
)
def test_what_a_hf_teacher_cannot_give_is_refused(
    prepared_parts, hf_dir, tmp_path, extra, message
) -> None:
    cfg = load_config(None, hf_overrides(prepared_parts, hf_dir, tmp_path, extra))
    with pytest.raises(ConfigError, match=message):
        Trainer(cfg)


def test_init_from_teacher_needs_an_asrkd_teacher(prepared_parts, hf_dir, tmp_path) -> None:
    extra = ["distill.strategy=sequence", "distill.init_from_teacher=true"]
    with pytest.raises(ConfigError, match="teacher.kind=checkpoint"):
        load_config(None, hf_overrides(prepared_parts, hf_dir, tmp_path, extra))


def test_a_path_that_is_no_model_is_named(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")  # a folder, but no model in it
    for path in (tmp_path, "/no/such/model"):
        with pytest.raises(FileNotFoundError, match="hf-ctc"):
            HFCTCTeacher(path)
