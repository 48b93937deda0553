"""Training end to end: the CTC path learns, the CLI chain works, failures stop cleanly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from asrkd.cli import main
from asrkd.config import EvalConfig, PrepareConfig, load_config
from asrkd.data.librispeech import prepare_librispeech
from asrkd.evaluation import evaluate
from asrkd.models.checkpoint import load_model
from asrkd.runtime import TrainingError
from asrkd.training import Trainer, train
from tests.conftest import tiny_run_overrides
from tests.helpers import write_librispeech_tree


def tiny_overrides(paths: dict, out: Path, steps: int, *extra: str) -> list[str]:
    """The suite's short tiny-preset run, evaluated and checkpointed every 100 steps."""
    return [
        *tiny_run_overrides(paths, out, steps),
        "train.eval_every=100",
        "train.checkpoint_every=100",
        *extra,
    ]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ls")
    tree = write_librispeech_tree(root, {"train": 16, "dev": 6, "test": 6}, n_speakers=2)
    return prepare_librispeech(
        tree, ["train", "dev", "test"], root / "prep", PrepareConfig(), progress=False
    )


def test_tiny_model_overfits_a_handful_of_utterances(small_corpus, tmp_path):
    """Proves the whole CTC path: features, targets, loss, decoding. Dev = train here."""
    paths = {"train": small_corpus["train"], "dev": small_corpus["train"]}
    cfg = load_config(
        None,
        tiny_overrides(
            paths, tmp_path / "run", 300, "data.spec_augment=false", "model.dropout=0.0"
        ),
    )
    run = train(cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_dev_wer"] < 0.10, summary
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.3 * losses[0]


def test_prepare_train_evaluate_through_the_cli(tmp_path, capsys):
    tree = write_librispeech_tree(
        tmp_path / "ls", {"train": 24, "dev": 6, "test": 6}, n_speakers=2, seed=3
    )
    assert (
        main(
            [
                "prepare",
                "librispeech",
                str(tree),
                "--parts",
                "train",
                "dev",
                "test",
                "--out",
                str(tmp_path / "prep"),
            ]
        )
        == 0
    )
    paths = {p: tmp_path / "prep" / f"cuts_{p}.jsonl.gz" for p in ("train", "dev", "test")}
    sets = [f"--set={o}" for o in tiny_overrides(paths, tmp_path / "run", 60)]
    assert main(["train", os.devnull, *sets]) == 0
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "model.safetensors",
        "final.safetensors",
        "metrics.jsonl",
        "summary.json",
    ):
        assert (run / name).is_file(), name
    assert (
        main(
            [
                "evaluate",
                str(run / "model.safetensors"),
                "--cuts",
                str(paths["test"]),
                "--out",
                str(tmp_path / "eval"),
                "--set",
                "latency_utterances=3",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert 0.0 <= summary["sets"]["test"]["wer"] <= 1.5
    assert summary["speed"]["rtf"] > 0 and summary["memory"]["peak_rss_mb"] > 0
    assert summary["bytes_on_disk"] > summary["bytes_fp32"] * 0.9
    for name in ("hyps-test-greedy.txt", "errors-test-greedy.txt", "wer-test-greedy.json"):
        assert (tmp_path / "eval" / name).is_file()
    capsys.readouterr()
    # the model transcribes raw audio from the file alone
    flac = min((tree / "test").rglob("*.flac"))
    assert main(["transcribe", str(run / "model.safetensors"), str(flac)]) == 0
    printed = capsys.readouterr().out
    assert str(flac) in printed
    # its forward pass in bfloat16 (--precision, as eval.precision)
    assert (
        main(["transcribe", str(run / "model.safetensors"), str(flac), "--precision", "bf16"]) == 0
    )
    assert capsys.readouterr().out.startswith(f"{flac}\t")


def test_the_model_kept_can_be_the_mean_of_the_last_checkpoints(small_corpus, tmp_path):
    """train.average_last=2: model.safetensors holds the mean of the last two checkpoints'
    weights (the final step's included), scored on dev once more; the final weights stay in
    final.safetensors. More than keep_checkpoints is refused."""
    from asrkd.config import ConfigError
    from asrkd.models.checkpoint import read_checkpoint

    extra = ["train.checkpoint_every=4", "train.eval_every=4", "train.keep_checkpoints=3"]
    run = train(load_config(None, tiny_overrides(small_corpus, tmp_path / "run", 10, *extra,
                                                   "train.average_last=2")))  # fmt: skip
    ckpts = sorted((run / "checkpoints").glob("step-*.safetensors"))
    assert [c.name for c in ckpts] == [f"step-{n:07d}.safetensors" for n in (4, 8, 10)]
    (a, _), (b, _) = read_checkpoint(ckpts[1]), read_checkpoint(ckpts[2])
    kept, _ = read_checkpoint(run / "model.safetensors")
    final, _ = read_checkpoint(run / "final.safetensors")
    moved = [k for k in kept if not torch.equal(a[k], b[k])]
    assert moved  # the two checkpoints differ, so the mean is neither
    for key in kept:
        torch.testing.assert_close(kept[key], (a[key] + b[key]) / 2)
        assert torch.equal(final[key], b[key])
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["averaged"] == [8, 10] == summary["averaged_steps"]
    assert summary["best_dev_wer"] == rows[-1]["dev_wer"] and summary["best_step"] == 10
    with pytest.raises(ConfigError, match="average_last"):
        load_config(None, tiny_overrides(small_corpus, tmp_path / "r2", 10, *extra,
                                          "train.average_last=4"))  # fmt: skip


def test_train_refuses_to_overwrite_a_run(small_corpus, tmp_path):
    cfg = load_config(None, tiny_overrides(small_corpus, tmp_path / "run", 5))
    train(cfg)
    with pytest.raises(TrainingError, match="--resume"):
        train(cfg)
    assert (
        main(
            [
                "train",
                os.devnull,
                *[f"--set={o}" for o in tiny_overrides(small_corpus, tmp_path / "run", 5)],
            ]
        )
        == 2
    )


def test_non_finite_losses_are_skipped_then_stop_the_run(small_corpus, tmp_path, monkeypatch):
    cfg = load_config(
        None, tiny_overrides(small_corpus, tmp_path / "run", 20, "train.max_bad_steps=3")
    )
    trainer = Trainer(cfg)
    real_forward = trainer.model.forward
    calls = {"n": 0}

    def flaky(feats, feat_lens):
        calls["n"] += 1
        out = real_forward(feats, feat_lens)
        if calls["n"] in (2, 3):  # two isolated bad batches: skipped, counted
            out.logits = out.logits * float("nan")
        return out

    monkeypatch.setattr(trainer.model, "forward", flaky)
    summary = trainer.run()
    assert summary["bad_steps"] == 2 and summary["steps"] == 20
    assert all(
        torch.isfinite(p).all()
        for p in load_model(tmp_path / "run" / "final.safetensors")[0].parameters()
    )

    cfg2 = load_config(
        None, tiny_overrides(small_corpus, tmp_path / "run2", 20, "train.max_bad_steps=3")
    )
    trainer2 = Trainer(cfg2)
    monkeypatch.setattr(trainer2.model, "forward", lambda f, n: _nan_output(real_forward, f, n))
    with pytest.raises(TrainingError, match="consecutive batches"):
        trainer2.run()


def _nan_output(forward, feats, feat_lens):
    out = forward(feats, feat_lens)
    out.logits = out.logits * float("nan")
    return out


@pytest.mark.librispeech
@pytest.mark.skipif(
    not os.environ.get("ASRKD_LIBRISPEECH_DIR"), reason="ASRKD_LIBRISPEECH_DIR not set"
)
def test_end_to_end_on_real_librispeech(tmp_path):
    """prepare -> train -> evaluate on real speech (test-other, 100 utterances)."""
    from asrkd.demo import split_dev_speakers

    root = os.environ["ASRKD_LIBRISPEECH_DIR"]
    paths = prepare_librispeech(
        root, ["test-other"], tmp_path / "prep", PrepareConfig(), progress=False
    )
    train_path, dev_path = split_dev_speakers(paths["test-other"], 2, tmp_path)
    # a second run finds the split written: the same bytes (gzip stamps the time), so teacher
    # caches and finished runs keyed by them stay valid
    before = train_path.read_bytes()
    assert split_dev_speakers(paths["test-other"], 2, tmp_path) == (train_path, dev_path)
    assert train_path.read_bytes() == before
    data = {"train": train_path, "dev": dev_path}
    cfg = load_config(
        None,
        tiny_overrides(
            data, tmp_path / "run", 40, "data.max_batch_seconds=60", "train.eval_every=40"
        ),
    )
    run = train(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]
    summary = evaluate(
        run / "model.safetensors", [dev_path], tmp_path / "eval", EvalConfig(latency_utterances=2)
    )
    assert summary["sets"]["dev-split"]["n_utterances"] == 20
