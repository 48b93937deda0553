"""Model files: rebuilt from the file alone, clear errors for broken or foreign files, atomic."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from asrkd.data.text import Tokenizer
from asrkd.models import PRESETS
from asrkd.models.checkpoint import (
    CheckpointError,
    atomic_write,
    load_model,
    read_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from asrkd.models.conformer import ConformerCTC

pytestmark = pytest.mark.usefixtures("one_thread")


def odd_model() -> ConformerCTC:
    """Dims that differ from every default, so they can only come from the file."""
    torch.manual_seed(0)
    dims = dataclasses.replace(
        PRESETS["tiny"], vocab_size=7, n_mels=40, n_layers=3, conv_kernel=5, dropout=0.0
    )
    return ConformerCTC(dims).eval()


TOKENIZER = Tokenizer(symbols=("<b>", " ", "a", "b", "c", "d", "e"))


def test_model_rebuilt_from_its_file_alone_gives_identical_outputs(tmp_path: Path) -> None:
    model = odd_model()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, TOKENIZER, config={"x": 1}, features={"n_mels": 40})
    loaded, tok = load_model(path)
    assert loaded.dims == model.dims
    assert tok == TOKENIZER
    assert not loaded.training
    feats, lens = torch.randn(2, 77, 40), torch.tensor([77, 50])
    with torch.no_grad():
        a, b = model(feats, lens), loaded(feats, lens)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states))
    _, meta = read_checkpoint(path)
    assert meta["config"] == {"x": 1} and meta["features"] == {"n_mels": 40}


def test_training_state_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    extra = {"optim.0.exp_avg": torch.arange(6.0).view(2, 3)}
    save_checkpoint(path, odd_model(), TOKENIZER, extra_tensors=extra, train_state={"step": 5})
    tensors, meta = read_checkpoint(path)
    assert torch.equal(tensors["optim.0.exp_avg"], extra["optim.0.exp_avg"])
    assert meta["train_state"] == {"step": 5}
    assert load_model(path)[0].dims.n_layers == 3  # extra tensors do not disturb the model


@pytest.mark.parametrize("keep", [0.5, 0.99, 7])
def test_truncated_file_is_a_clear_checkpoint_error(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, odd_model(), TOKENIZER)
    data = path.read_bytes()
    path.write_bytes(data[: int(keep if keep > 1 else len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such model file"):
        load_model(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_foreign_safetensors_file_is_refused(tmp_path: Path, metadata) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="not an asrkd checkpoint"):
        load_model(path)


def rewrite(path: Path, edit) -> None:
    """Rewrite an asrkd file after edit(tensors, meta) changed it in place."""
    tensors, meta = read_checkpoint(path)
    edit(tensors, meta)
    raw = {k: (v if k == "format" else json.dumps(v)) for k, v in meta.items()}
    save_file(tensors, str(path), metadata=raw)


@pytest.mark.parametrize(
    ("edit", "detail"),
    [
        (lambda t, m: t.pop("model.ctc_head.weight"), "ctc_head.weight"),
        (lambda t, m: m["dims"].update(d_model=64), "size mismatch"),
        (lambda t, m: m["dims"].update(new_field=1), "new_field"),
    ],
)
def test_file_that_does_not_fit_the_model_is_a_checkpoint_error(tmp_path, edit, detail) -> None:
    """Tensors or dims of another model (another version): a CheckpointError, which the CLI
    reports cleanly, rather than a bare load_state_dict or TypeError traceback."""
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, odd_model(), TOKENIZER)
    rewrite(path, edit)
    with pytest.raises(CheckpointError, match="does not fit an asrkd model") as err:
        load_model(path)
    assert detail in str(err.value) and str(path) in str(err.value)


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    """Not 0600 like mkstemp's files: a model file is meant to be shared."""
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "m.safetensors", odd_model(), TOKENIZER)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == 0o644


def test_atomic_write_leaves_no_partial_file_when_the_writer_raises(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.safetensors"

    def broken(tmp: str) -> None:
        Path(tmp).write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert list(target.parent.iterdir()) == []

    target.write_bytes(b"old")
    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"  # the previous file survives intact
    assert list(target.parent.iterdir()) == [target]

    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert target.read_bytes() == b"new"
    assert list(target.parent.iterdir()) == [target]


def test_only_a_dead_writers_old_temporaries_are_removed(tmp_path):
    import subprocess
    import sys
    import time

    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    dead_pid = int(dead.stdout)
    old = time.time() - 3600
    files = {
        "dead-old": f".step-0000100.safetensors.{dead_pid}.0123456789ab.tmp",
        "dead-fresh": f".model.safetensors.{dead_pid}.0123456789ac.tmp",
        "live-old": f".step-0000200.safetensors.{os.getpid()}.0123456789ad.tmp",
        "not-ours": f".notes.{dead_pid}.tmp",
    }
    for kind, name in files.items():
        (tmp_path / name).write_bytes(b"x")
        if kind != "dead-fresh":
            os.utime(tmp_path / name, (old, old))
    removed = remove_stale_temporaries(tmp_path)
    assert removed == [tmp_path / files["dead-old"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        name for kind, name in files.items() if kind != "dead-old"
    )
