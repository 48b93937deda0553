"""A Whisper-encoder student end to end on the tone corpus prepared with Whisper features:
training (loss falls), resume, the model file, evaluate, transcribe; and the errors of a
Whisper student on fbank features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from asrkd.config import ConfigError, EvalConfig, FeatureConfig, PrepareConfig, load_config
from asrkd.data.dataset import collate, load_cuts
from asrkd.data.text import Tokenizer
from asrkd.data.whisper_features import log_mel
from asrkd.distill.strategies import Distiller
from asrkd.evaluation import evaluate
from asrkd.models import PRESETS, ModelOutput, build_model
from asrkd.models.checkpoint import load_model, read_checkpoint_meta
from asrkd.training import Trainer, train
from asrkd.transcribe import Transcriber, fbank, transcribe_files
from tests.conftest import tiny_run_overrides

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 40


@pytest.fixture(scope="module")
def whisper_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tone corpus (40/8/8 utterances) prepared with features.kind=whisper."""
    from asrkd.data.librispeech import prepare_librispeech
    from tests.helpers import write_librispeech_tree

    root = tmp_path_factory.mktemp("whisper_corpus")
    corpus = write_librispeech_tree(root, {"train": 40, "dev": 8, "test": 8}, n_speakers=4)
    cfg = PrepareConfig(features=FeatureConfig(kind="whisper"))
    return prepare_librispeech(corpus, ["train", "dev", "test"], root / "out", cfg, False)


def overrides(parts: dict[str, Path], out: Path, steps: int) -> list[str]:
    return [*tiny_run_overrides(parts, out, steps), "model.preset=whisper-tiny-test"]


@pytest.fixture(scope="module")
def whisper_run(whisper_parts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whisper_run") / "run"
    cfg = load_config(None, [*overrides(whisper_parts, out, STEPS), "train.checkpoint_every=20"])
    return train(cfg)


def test_training_lowers_the_loss_and_the_file_reloads(whisper_run, whisper_parts) -> None:
    rows = [json.loads(x) for x in (whisper_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.7 * losses[0], losses
    path = whisper_run / "model.safetensors"
    meta = read_checkpoint_meta(path)
    assert meta["family"] == "whisper-encoder" and meta["features"]["kind"] == "whisper"
    model, _ = load_model(path)
    assert model.family == "whisper-encoder" and model.dims.d_model == 32
    summary = evaluate(path, [whisper_parts["test"]], whisper_run / "eval", EvalConfig(), False)
    assert summary["family"] == "whisper-encoder" and "test" in summary["sets"]


def test_transcribe_computes_the_stored_features(whisper_run, whisper_parts) -> None:
    cut = min(load_cuts(whisper_parts["test"]), key=lambda c: c.id)
    audio = cut.load_audio()[0]
    stored = collate([cut], Tokenizer()).feats[0].numpy()
    assert stored.shape == (len(audio) // 160, 80)
    assert np.abs(stored - log_mel(audio)).max() < 2e-3  # lilcom steps of 2^-9
    transcriber = Transcriber(whisper_run / "model.safetensors")
    assert transcriber.features.kind == "whisper"
    for n in (len(audio), len(audio) - 80, len(audio) - 79):  # lhotse rounds, Whisper floors
        feats = fbank(audio[:n], transcriber.features).numpy()
        assert feats.shape == (n // 160, 80) and np.array_equal(feats, log_mel(audio[:n]))
    assert np.abs(stored - fbank(audio, transcriber.features).numpy()).max() < 2e-3
    [(_, text)] = transcribe_files(
        whisper_run / "model.safetensors", [cut.recording.sources[0].source]
    )
    assert isinstance(text, str)


def test_resume_continues_from_the_checkpoint(whisper_run, whisper_parts, tmp_path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(whisper_run, run)
    for ckpt in sorted((run / "checkpoints").glob("*.safetensors"))[1:]:
        ckpt.unlink()  # back to step 20
    cfg = load_config(None, overrides(whisper_parts, run, STEPS + 5))
    trainer = Trainer(cfg, resume=True)
    assert trainer.state.step == 20 and trainer.model.family == "whisper-encoder"


def test_batch_frames_are_the_frames_a_batch_gives(whisper_parts) -> None:
    """asrkd.data.dataset.batch_frames (what the teacher-transcript length check counts): the
    frames collate gives each cut, Whisper's n // 160 where lhotse stores round(n / 160)."""
    from lhotse import CutSet

    from asrkd.data.dataset import batch_frames, collate, load_cuts
    from asrkd.data.text import Tokenizer

    cuts = load_cuts(whisper_parts["train"])
    given = collate(CutSet.from_cuts(cuts), Tokenizer()).feat_lens.tolist()
    assert [batch_frames(c) for c in cuts] == given
    assert any(c.num_frames != n for c, n in zip(cuts, given))  # the case it exists for


def test_whisper_students_need_whisper_features(prepared_parts, tmp_path) -> None:
    cfg = load_config(None, overrides(prepared_parts, tmp_path / "run", 1))
    with pytest.raises(ConfigError, match="features.kind=whisper"):
        Trainer(cfg)


def test_hidden_kd_is_family_agnostic() -> None:
    from asrkd.config import DistillConfig
    from asrkd.data.dataset import Batch
    from asrkd.distill.teachers import TeacherOutput

    student = build_model("whisper-tiny-test", 29, 80, 0.0)
    teacher_dims = PRESETS["tiny"]
    distiller = Distiller(DistillConfig(strategy="hidden"), Tokenizer(), student.dims, teacher_dims)
    feats, lens = torch.randn(2, 200, 80), torch.tensor([200, 150])
    out = student(feats, lens)
    teacher = TeacherOutput(
        lengths=torch.tensor([49, 36]),
        hidden={i: torch.randn(2, 49, teacher_dims.d_model) for i in range(teacher_dims.n_layers)},
    )
    batch = Batch(feats, lens, torch.ones(2, 3, dtype=torch.long), torch.tensor([3, 3]),
                  torch.tensor([True, True]), ["a", "b"], [2.0, 1.5])  # fmt: skip
    total, terms = distiller(out, teacher, batch)
    assert torch.isfinite(total) and terms["kd_hidden"] > 0


def test_a_run_starts_from_the_whisper_named_by_init_from(whisper_parts, tmp_path) -> None:
    """distill.init_from with strategy none: no teacher, the student takes the Whisper's front
    end and evenly spaced blocks (2 of 4: blocks 0 and 3)."""
    transformers = pytest.importorskip("transformers")
    from asrkd.models.whisper_io import load_whisper

    conf = transformers.WhisperConfig(
        vocab_size=100, num_mel_bins=80, d_model=32, encoder_layers=4, encoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
        max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )  # fmt: skip
    transformers.WhisperForConditionalGeneration(conf).save_pretrained(tmp_path / "whisper")
    extra = [f"distill.init_from={tmp_path / 'whisper'}"]
    trainer = Trainer(load_config(None, [*overrides(whisper_parts, tmp_path / "run", 1), *extra]))
    encoder = load_whisper(tmp_path / "whisper").get_encoder()
    student = trainer.model.cpu()  # the trainer's device: cuda where there is one
    assert torch.equal(student.conv1.weight, encoder.conv1.weight)
    assert torch.equal(student.blocks[0].fc1.weight, encoder.layers[0].fc1.weight)
    assert torch.equal(student.blocks[1].fc1.weight, encoder.layers[3].fc1.weight)
    assert torch.equal(student.layer_norm.bias, encoder.layer_norm.bias)


def take_steps(trainer: Trainer, batches, n: int) -> None:
    """n optimisation steps of `trainer` on the next batches, each one finite."""
    for _ in range(n):
        _, cuts = next(batches)
        assert trainer.step(trainer._share(cuts)[0]) is not None
        trainer.state.step += 1


def test_head_steps_train_only_the_head_then_everything(whisper_parts, tmp_path) -> None:
    """train.head_steps: the first steps leave every layer but the CTC head exactly as it was;
    after them the body learns too, and a run resumed across the boundary matches one that was
    not stopped."""
    base = [*overrides(whisper_parts, tmp_path / "a", 8), "train.head_steps=4"]
    trainer = Trainer(load_config(None, [*base, "train.warmup_steps=2"]))
    body0 = {k: v.clone() for k, v in trainer.model.state_dict().items() if "ctc_head" not in k}
    head0 = trainer.model.ctc_head.weight.detach().clone()
    batches = trainer.batches()
    take_steps(trainer, batches, 4)
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in body0.items())
    assert not torch.equal(trainer.model.ctc_head.weight, head0)
    assert trainer.optimizer.param_groups[1]["lr"] > 0  # the body's warm-up has begun
    _, cuts = next(batches)
    assert trainer.step(trainer._share(cuts)[0]) is not None
    moved = trainer.model.state_dict()
    assert any(not torch.equal(moved[k], v) for k, v in body0.items())

    # resumed from the checkpoint at step 3 (inside the head phase): bit-exact on CPU
    import shutil

    from safetensors.torch import load_file

    cfg_b = [
        *overrides(whisper_parts, tmp_path / "b", 8),
        "train.head_steps=4",
        "train.checkpoint_every=3",
        "train.keep_checkpoints=5",
    ]
    straight = train(load_config(None, cfg_b))
    shutil.copytree(straight, tmp_path / "c")
    for path in [
        *sorted((tmp_path / "c" / "checkpoints").glob("*.safetensors"))[1:],
        tmp_path / "c" / "summary.json",
    ]:
        path.unlink()
    cfg_c = [*cfg_b[:-3], f"train.out_dir={tmp_path / 'c'}", *cfg_b[-3:]]
    resumed = train(load_config(None, cfg_c), resume=True)
    a = load_file(str(straight / "final.safetensors"))
    b = load_file(str(resumed / "final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_freeze_keeps_the_named_layers_and_trains_the_rest(whisper_parts, tmp_path) -> None:
    """train.freeze: the named layers (prefixes of parameter names) never change and get no
    gradient; the layers above them and the head learn; a name that matches nothing is a
    ConfigError naming it."""
    base = [*overrides(whisper_parts, tmp_path / "a", 6), "train.warmup_steps=2"]
    trainer = Trainer(load_config(None, [*base, "train.freeze=[conv1,conv2,blocks.0]"]))
    state0 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    frozen = [k for k in state0 if k.startswith(("conv1.", "conv2.", "blocks.0."))]
    assert frozen and all(
        not p.requires_grad for n, p in trainer.model.named_parameters() if n in frozen
    )
    take_steps(trainer, trainer.batches(), 3)
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], state0[k]) for k in frozen)
    for trained in ("blocks.1.fc1.weight", "ctc_head.weight"):
        assert not torch.equal(after[trained], state0[trained]), trained
    with pytest.raises(ConfigError, match="'blocks.9' names no parameter"):
        Trainer(
            load_config(
                None, [*overrides(whisper_parts, tmp_path / "b", 6), "train.freeze=[blocks.9]"]
            )
        )


def test_starting_above_the_frozen_blocks_gives_the_whole_forward() -> None:
    """front(..., n) then forward_from(..., n): the same logits and hidden states as forward,
    for every split and a padded batch (valid frames never see what lies past them)."""
    torch.manual_seed(0)
    model = build_model("whisper-tiny-test", 29, 80, 0.0).eval()
    feats, feat_lens = torch.randn(3, 57, 80), torch.tensor([57, 40, 9])
    whole = model(feats, feat_lens)
    for n in range(model.dims.n_layers + 1):
        x = model.front(feats, feat_lens, n)
        x = x.masked_fill(
            torch.arange(x.shape[1])[None, :, None] >= whole.lengths[:, None, None], 7.0
        )
        part = model.forward_from(x, whole.lengths, n)
        for i, length in enumerate(whole.lengths.tolist()):
            torch.testing.assert_close(part.logits[i, :length], whole.logits[i, :length])
            for layer in range(max(0, n - 1), model.dims.n_layers):
                torch.testing.assert_close(
                    part.hidden_states[layer][i, :length], whole.hidden_states[layer][i, :length]
                )
        assert all(h is None for h in part.hidden_states[: max(0, n - 1)])


def test_cached_frozen_layers_train_as_the_whole_student(whisper_parts, tmp_path) -> None:
    """train.cache_frozen: the same losses step by step as computing the frozen front end and
    block every step, each training utterance's states computed once and kept; refused where
    its output would change from pass to pass or nothing at the input is frozen."""
    steps = 24  # the 40 utterances' first pass and part of the second
    base = [*overrides(whisper_parts, tmp_path / "plain", steps), "model.dropout=0.0", "data.spec_augment=false",
            "train.freeze=[conv1,conv2,blocks.0]", "train.eval_every=100"]  # fmt: skip
    losses = {}
    for cached in (False, True):
        out = tmp_path / f"cached-{cached}"
        cfg = load_config(None, [*base, f"train.out_dir={out}", f"train.cache_frozen={cached}"])
        trainer = Trainer(cfg)
        summary = trainer.run()
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[cached] = [r["loss"] for r in rows if "loss" in r]
        if cached:
            assert trainer.front_blocks == 1
            assert set(trainer.front_cache) == {c.id for c in load_cuts(whisper_parts["train"])}
            assert summary["frozen_cache"]["utterances"] == 40
    assert len(losses[True]) == len(losses[False]) > 0
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
    for extra, message in (
        (["data.spec_augment=true"], "data.spec_augment=true would change"),
        (["data.tempo_range=[0.9,1.1]"], "data.tempo_range"),
        (["model.dropout=0.1"], "model.dropout=0.1"),
        (["train.freeze=[]"], "needs frozen layers"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [*base, "train.cache_frozen=true", *extra])
    cfg = load_config(
        None, [*base, "train.cache_frozen=true", "train.freeze=[blocks.0]",
               f"train.out_dir={tmp_path / 'x'}"],
    )  # fmt: skip
    with pytest.raises(ConfigError, match="leaves its front end"):
        Trainer(cfg)


def test_intermediate_ctc_trains_a_middle_block_through_the_head(whisper_parts, tmp_path) -> None:
    """train.inter_ctc_weight: the middle block's output, read by the final LayerNorm and the CTC
    head, is trained on the transcripts too; the model file holds the same weights as without
    it; the last block and a frozen block are refused."""
    base = [*overrides(whisper_parts, tmp_path / "x", 12), "model.preset=whisper-tiny-enc4",
            "model.dropout=0.0", "data.spec_augment=false", "train.eval_every=100",
            "train.inter_ctc_weight=0.3"]  # fmt: skip
    cfg = load_config(None, [*base, f"train.out_dir={tmp_path / 'inter'}"])
    trainer = Trainer(cfg)
    assert trainer.inter_block == 1  # (4 - 1) // 2
    batch = collate(load_cuts(whisper_parts["train"])[:3], trainer.tokenizer)
    total, terms = trainer._loss(batch)
    model = trainer.model
    out = model(batch.feats, batch.feat_lens)
    inter = model.ctc_head(model.layer_norm(out.hidden_states[1]))
    ctc_i = trainer.distiller(ModelOutput(inter, out.lengths, ()), None, batch)[1]["ctc"]
    torch.testing.assert_close(terms["inter_ctc"], ctc_i)
    torch.testing.assert_close(total, terms["ctc"] + 0.3 * terms["inter_ctc"])
    trainer.run()
    rows = [json.loads(x) for x in (tmp_path / "inter" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["inter_ctc"] > 0 for r in rows if "loss" in r)
    plain = build_model("whisper-tiny-enc4", model.dims.vocab_size, model.dims.n_mels, 0.0)
    saved, _ = load_model(tmp_path / "inter" / "model.safetensors")
    assert set(saved.state_dict()) == set(plain.state_dict())
    for extra, message in (
        (["train.inter_ctc_block=3"], "below the last"),
        (["train.inter_ctc_block=1", "train.freeze=[blocks.1]"], "that block is frozen"),
    ):
        with pytest.raises(ConfigError, match=message):
            Trainer(load_config(None, [*base, f"train.out_dir={tmp_path / 'bad'}", *extra]))
    with pytest.raises(ConfigError, match="inter_ctc_weight must be >= 0"):
        load_config(None, [*base, "train.inter_ctc_weight=-1"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_resumed_run_fills_its_frozen_cache_again(whisper_parts, tmp_path, precision) -> None:
    """The cache lives in the training process: a run resumed from its checkpoint computes the
    frozen layers' output again as it meets each utterance and trains as the uninterrupted run,
    in either train.precision."""
    out = tmp_path / "run"
    cfg = load_config(
        None, [*overrides(whisper_parts, out, 24), "model.dropout=0.0", "data.spec_augment=false",
               "train.freeze=[conv1,conv2,blocks.0]", "train.eval_every=100",
               "train.cache_frozen=true", "train.checkpoint_every=12",
               f"train.precision={precision}"],
    )  # fmt: skip
    Trainer(cfg).run()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    whole = {r["step"]: r["loss"] for r in rows if "loss" in r}
    (out / "checkpoints" / "step-0000024.safetensors").unlink()  # killed after step 12
    for name in ("model.safetensors", "summary.json"):
        (out / name).unlink()
    resumed = Trainer(cfg, resume=True)
    assert resumed.state.step == 12 and not resumed.front_cache
    resumed.run()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    again = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(again) == sorted(whole) and max(whole) > 12
    np.testing.assert_allclose([again[s] for s in sorted(again)],
                               [whole[s] for s in sorted(whole)], rtol=1e-4)  # fmt: skip
    assert len(resumed.front_cache) > 0


def test_bf16_precision_runs_the_student_in_bfloat16_and_keeps_float32_weights(
    whisper_parts, tmp_path
) -> None:
    """train.precision=bf16: the student's layers compute in bfloat16 (the cached frozen ones
    too), its weights, the cache and the losses stay float32, and it learns as the fp32 run does;
    any other precision is refused."""
    base = [*overrides(whisper_parts, tmp_path / "x", 24), "model.dropout=0.0", "data.spec_augment=false",
            "train.freeze=[conv1,conv2,blocks.0]", "train.cache_frozen=true", "train.eval_every=100"]  # fmt: skip
    losses, dtypes = {}, {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        cfg = load_config(None, [*base, f"train.out_dir={out}", f"train.precision={precision}"])
        trainer = Trainer(cfg)
        seen: set[torch.dtype] = set()

        def record(module, _inputs, output, seen=seen) -> None:
            if module.training:  # dev scoring is float32 whatever train.precision
                seen.add(output.dtype)

        for layer in (trainer.model.blocks[0].fc1, trainer.model.blocks[-1].fc1):
            layer.register_forward_hook(record)
        assert trainer.run()["precision"] == precision
        dtypes[precision] = seen
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[precision] = [r["loss"] for r in rows if "loss" in r]
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        assert all(x.dtype == torch.float32 for x in trainer.front_cache.values())
        model, _ = load_model(out / "model.safetensors")
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert dtypes == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    assert losses["bf16"][-1] < 0.85 * losses["bf16"][0], losses
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=0.1)
    with pytest.raises(ConfigError, match="train.precision='fp16' is not one of fp32, bf16, auto"):
        load_config(None, [*base, "train.precision=fp16"])


def test_auto_precision_is_bf16_only_where_the_hardware_computes_it(monkeypatch, caplog) -> None:
    import asrkd.precision as precision_module

    cpu = torch.device("cpu")
    for native, auto in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision_module, "native_bf16", lambda _device, n=native: n)
        caplog.clear()
        assert precision_module.resolve_precision("auto", cpu) == auto
        assert precision_module.resolve_precision("fp32", cpu) == "fp32"
        assert precision_module.resolve_precision("bf16", cpu) == "bf16"
        assert ("emulated and slower" in caplog.text) is (not native)
