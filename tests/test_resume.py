"""Crash safety: a SIGKILLed run resumes bit-exactly; broken checkpoints are detected."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from asrkd.config import PrepareConfig, load_config
from asrkd.data.librispeech import prepare_librispeech
from asrkd.models.checkpoint import CheckpointError, load_model
from asrkd.runtime import latest_checkpoint
from asrkd.training import train
from tests.helpers import write_librispeech_tree


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ls")
    tree = write_librispeech_tree(root, {"train": 30, "dev": 4}, n_speakers=2, seed=5)
    return prepare_librispeech(
        tree, ["train", "dev"], root / "prep", PrepareConfig(), progress=False
    )


def overrides(corpus: dict, out: Path) -> list[str]:
    # ~6 batches per epoch: checkpoints at 10, 20, 30 fall mid-epoch.
    return [
        f"data.train_cuts={corpus['train']}",
        f"data.dev_cuts={corpus['dev']}",
        "data.max_batch_seconds=8",
        "train.max_steps=40",
        "train.warmup_steps=5",
        "model.preset=tiny",
        "train.checkpoint_every=10",
        "train.eval_every=20",
        "train.keep_checkpoints=5",
        "train.progress=false",
        f"train.out_dir={out}",
        "train.threads=1",
    ]


def test_sigkill_then_resume_equals_uninterrupted_run(corpus, tmp_path):
    """Bit-exact on CPU: same seed, same batches, same RNG streams after the restore."""
    train(load_config(None, overrides(corpus, tmp_path / "straight")))
    killed = tmp_path / "killed"
    args = [sys.executable, "-m", "asrkd.cli", "train", os.devnull]
    for o in overrides(corpus, killed):
        args += ["--set", o]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "checkpoints" / "step-0000020.safetensors"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the run never reached its second checkpoint"
    assert not (killed / "summary.json").exists(), "killed too late: the run had finished"
    # what a kill in the middle of writing step 30 leaves (the temporary of atomic_write)
    half = killed / "checkpoints" / f".step-0000030.safetensors.{proc.pid}.0123456789ab.tmp"
    half.write_bytes(target.read_bytes()[:1000])
    os.utime(half, (time.time() - 3600, time.time() - 3600))
    train(load_config(None, overrides(corpus, killed)), resume=True)
    assert not half.exists(), "the killed write's temporary file was left behind"
    a = load_file(str(tmp_path / "straight" / "final.safetensors"))
    b = load_file(str(killed / "final.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key


def test_truncated_checkpoint_is_detected_and_skipped(corpus, tmp_path):
    run = train(load_config(None, overrides(corpus, tmp_path / "run")))
    ckpts = sorted((run / "checkpoints").glob("step-*.safetensors"))
    newest = ckpts[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(newest)
    assert latest_checkpoint(run / "checkpoints") == ckpts[-2]
    with pytest.raises(CheckpointError, match="no such model file"):
        load_model(run / "missing.safetensors")


def test_checkpoints_are_written_atomically(corpus, tmp_path):
    """No temporary files are left behind and every checkpoint on disk is readable."""
    run = train(load_config(None, overrides(corpus, tmp_path / "run")))
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
    for path in (run / "checkpoints").glob("step-*.safetensors"):
        load_model(path)
