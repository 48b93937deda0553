"""Data-parallel training (asrkd.distributed): shares of a batch, the summed gradient against the
one-process gradient on the whole batch, and a two-process run end to end with resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asrkd.config import ConfigError, load_config
from asrkd.distributed import World, init_group, launch, leave_group, share_of_batch, world_from_env
from asrkd.training import Trainer, train
from tests.conftest import tiny_run_overrides


@pytest.mark.parametrize("size", [2, 3])
def test_shares_partition_the_batch_and_balance_its_audio(size: int) -> None:
    durations = [3.0, 9.5, 1.2, 4.4, 4.4, 7.0, 0.8, 2.5]
    shares = [share_of_batch(durations, World(rank=r, size=size)) for r in range(size)]
    assert sorted(i for s in shares for i in s) == list(range(len(durations)))
    audio = [sum(durations[i] for i in s) for s in shares]
    assert max(audio) - min(audio) <= max(durations)
    assert shares == [share_of_batch(durations, World(rank=r, size=size)) for r in range(size)]
    # fewer cuts than processes: the others get nothing (and add zero gradients)
    assert [share_of_batch([5.0], World(rank=r, size=2)) for r in range(2)] == [[0], []]


def _overrides(parts: dict, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        *tiny_run_overrides(parts, out, steps),
        "model.dropout=0.0",
        "data.spec_augment=false",
        *extra,
    ]


def _gradients_of_first_batch(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The gradient one step computes on the first batch (after summing over processes)."""
    cuts = list(next(trainer.batches())[1])
    trainer.optimizer.step = lambda: None  # keep the gradients, leave the weights
    assert trainer.step(*trainer._share(cuts)) is not None
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


def _gradient_process(world: World, init_method: str, cfg, path: str) -> None:
    init_group(world, torch.device("cpu"), init_method)
    try:
        grads = _gradients_of_first_batch(Trainer(cfg, world=world))
        torch.save(grads, f"{path}.{world.rank}")
    finally:
        leave_group()


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_two_processes_compute_the_whole_batch_gradient(prepared_parts, tmp_path) -> None:
    """Each process weighs its share's per-frame loss by its share of the audio, so the summed
    gradient is the one-process gradient on the whole batch up to frame rounding."""
    big_batch = "data.max_batch_seconds=60"
    one = Trainer(load_config(None, _overrides(prepared_parts, tmp_path / "one", 1, big_batch)))
    expected = _gradients_of_first_batch(one)
    cfg = load_config(None, _overrides(prepared_parts, tmp_path / "two", 1, big_batch))
    launch(_gradient_process, 2, cfg, str(tmp_path / "grads"))
    per_rank = [torch.load(tmp_path / f"grads.{r}") for r in range(2)]
    for name, want in expected.items():
        assert torch.equal(per_rank[0][name], per_rank[1][name]), name  # same update everywhere
        got = per_rank[0][name]
        cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert cos > 0.995, (name, cos)
        assert abs(got.norm() / want.norm() - 1) < 0.03, name


def test_a_two_process_run_trains_saves_and_resumes(prepared_parts, tmp_path) -> None:
    out = tmp_path / "run"
    extra = ("train.checkpoint_every=20", "train.eval_every=20", "train.processes=2")
    cfg = load_config(None, _overrides(prepared_parts, out, 40, *extra))
    assert train(cfg) == out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["bad_steps"] == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]  # one writer: rank 0
    assert [r["step"] for r in rows if "dev_wer" in r] == [20, 40]
    assert (out / "model.safetensors").is_file() and (out / "final.safetensors").is_file()
    # continue the finished run to 60 steps: both processes start from step 40's checkpoint
    longer = load_config(None, _overrides(prepared_parts, out, 60, *extra))
    train(longer, resume=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 60
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [10, 20, 30, 40, 50, 60]


def test_torchrun_environment_and_conflicting_settings(prepared_parts, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world_from_env() is None
    cfg = load_config(None, _overrides(prepared_parts, tmp_path / "r", 5, "train.processes=2"))
    with pytest.raises(ConfigError, match="sweep"):
        train(cfg, on_eval=lambda step, row: None)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert world_from_env() == World(rank=2, size=4, local_rank=0)
    with pytest.raises(ConfigError, match="torchrun"):
        train(cfg)
    with pytest.raises(ConfigError, match="processes"):
        load_config(None, ["train.processes=0"])


def test_the_all_reduce_message_keeps_the_gradients_dtype(monkeypatch) -> None:
    """One float32 message of gradients plus extras (loss terms, flag): a float64 extra must not
    promote it (that doubled the bytes sent)."""
    import torch.distributed as dist

    from asrkd.distributed import free_port, sum_gradients

    sent = []
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        real = dist.all_reduce
        monkeypatch.setattr(dist, "all_reduce", lambda t: (sent.append(t.dtype), real(t)))
        w = torch.nn.Parameter(torch.ones(3))
        w.grad = torch.full((3,), 2.0)
        unused = torch.nn.Parameter(torch.ones(2))  # no gradient: counts as zeros
        extras = torch.tensor([0.0, 1.5], dtype=torch.float64)
        summed = sum_gradients([w, unused], extras, World(rank=0, size=2))
    finally:
        dist.destroy_process_group()
    assert sent == [torch.float32]
    assert summed.dtype == torch.float64 and summed.tolist() == [0.0, 1.5]
    assert w.grad.tolist() == [2.0, 2.0, 2.0] and unused.grad.tolist() == [0.0, 0.0]
