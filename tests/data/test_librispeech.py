"""prepare_librispeech on the synthetic tree (and on real LibriSpeech when ASRKD_LIBRISPEECH_DIR is
set): manifests load with lhotse, every cut has stored features and one normalised supervision,
and a second call reuses the outputs unless the config changed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, load_manifest_lazy, validate
from lhotse.utils import compute_num_frames

from asrkd.config import FeatureConfig, PrepareConfig
from asrkd.data.librispeech import DataError, prepare_librispeech
from asrkd.data.text import Tokenizer
from tests.helpers import char_tone_hz, render_text, write_librispeech_tree

PARTS = {"train": 12, "dev": 4}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("prep")
    corpus = write_librispeech_tree(tmp, PARTS, n_speakers=2, seed=0)
    out = prepare_librispeech(corpus, PARTS, tmp / "out", PrepareConfig(), progress=False)
    return corpus, out


def test_cuts_have_features_and_one_normalised_supervision(prepared) -> None:
    _corpus, out = prepared
    assert set(out) == set(PARTS)
    for part, n_utts in PARTS.items():
        assert out[part].name == f"cuts_{part}.jsonl.gz"
        cuts = CutSet.from_file(out[part])
        assert len(cuts) == n_utts == len(list(load_manifest_lazy(out[part])))
        validate(cuts, read_data=True)
        for cut in cuts:
            feats = cut.load_features()
            assert feats.dtype == np.float32 and feats.shape[1] == 80
            assert feats.shape[0] == compute_num_frames(cut.duration, 0.01, 16000)
            assert np.isfinite(feats).all()
            (sup,) = cut.supervisions
            assert cut.id == sup.id == cut.recording.id  # the LibriSpeech utterance id
            assert sup.text == sup.text.lower() and sup.text.strip() == sup.text
            assert sup.text == sup.custom["orig_text"].lower()
            assert Tokenizer().oov_chars(sup.text) == set()


def test_report_written_with_no_problems(prepared) -> None:
    _corpus, out = prepared
    report = json.loads((out["train"].parent / "prepare_train_report.json").read_text())
    assert report["n_cuts"] == PARTS["train"] and report["problems"] == []


def test_second_call_reuses_and_changed_config_recomputes(tmp_path: Path) -> None:
    corpus = write_librispeech_tree(tmp_path, {"dev": 3}, n_speakers=1)
    cfg = PrepareConfig()
    out = prepare_librispeech(corpus, ["dev"], tmp_path / "out", cfg, progress=False)
    feats = tmp_path / "out" / "feats_dev.lca"
    first = feats.stat().st_mtime_ns
    time.sleep(0.01)
    prepare_librispeech(corpus, ["dev"], tmp_path / "out", cfg, progress=False)
    assert feats.stat().st_mtime_ns == first, "an unchanged config must reuse the features"
    changed = PrepareConfig(features=FeatureConfig(n_mels=40))
    out = prepare_librispeech(corpus, ["dev"], tmp_path / "out", changed, progress=False)
    assert feats.stat().st_mtime_ns != first
    assert CutSet.from_file(out["dev"])[0].load_features().shape[1] == 40


def test_two_workers_give_the_same_features_one_thread_each(
    prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """num_jobs=2 spawns lhotse workers told to use one thread (OMP_NUM_THREADS, which spawned
    processes read): same features as one process, and the caller's environment is restored."""
    corpus, one_job = prepared
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    two_jobs = prepare_librispeech(
        corpus, ["dev"], tmp_path, PrepareConfig(num_jobs=2), progress=False
    )
    assert os.environ["OMP_NUM_THREADS"] == "2"
    a = {c.id: c.load_features() for c in CutSet.from_file(one_job["dev"])}
    b = {c.id: c.load_features() for c in CutSet.from_file(two_jobs["dev"])}
    assert a.keys() == b.keys()
    for cut_id, feats in a.items():
        np.testing.assert_allclose(b[cut_id], feats, atol=1e-4)
    monkeypatch.delenv("OMP_NUM_THREADS")
    prepare_librispeech(corpus, ["dev"], tmp_path / "again", PrepareConfig(num_jobs=2), False)
    assert "OMP_NUM_THREADS" not in os.environ


def test_missing_part_is_a_data_error(tmp_path: Path) -> None:
    corpus = write_librispeech_tree(tmp_path, {"dev": 1}, n_speakers=1)
    with pytest.raises(DataError, match="nope"):
        prepare_librispeech(corpus, ["nope"], tmp_path / "out", PrepareConfig(), progress=False)


def test_speakers_linked_into_a_part_are_prepared(tmp_path: Path) -> None:
    """A part assembled from symbolic links to speakers' folders (how corpora are often put
    together) gives the same utterances as the folders themselves: Path.rglob does not enter
    such links before Python 3.13, which left every linked speaker out without a word."""
    corpus = write_librispeech_tree(tmp_path / "real", {"dev": 3}, n_speakers=2, seed=3)
    linked = tmp_path / "linked" / "dev"
    linked.mkdir(parents=True)
    for speaker in sorted((corpus / "dev").iterdir()):
        (linked / speaker.name).symlink_to(speaker, target_is_directory=True)
    (linked / "loop").symlink_to(linked, target_is_directory=True)  # a cycle ends
    cfg = PrepareConfig()
    real = CutSet.from_file(prepare_librispeech(corpus, ["dev"], tmp_path / "a", cfg, False)["dev"])
    path = prepare_librispeech(linked.parent, ["dev"], tmp_path / "b", cfg, False)["dev"]
    cuts = CutSet.from_file(path)
    assert sorted(cuts.ids) == sorted(real.ids) and len(cuts) == 3
    report = json.loads((tmp_path / "b" / "prepare_dev_report.json").read_text())
    assert report["n_audio_files"] == 3, report


def test_tree_is_deterministic_and_laid_out_like_librispeech(tmp_path: Path) -> None:
    a = write_librispeech_tree(tmp_path / "a", {"test": 3}, n_speakers=2, seed=5)
    b = write_librispeech_tree(tmp_path / "b", {"test": 3}, n_speakers=2, seed=5)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert {f.suffix for f in files} == {".flac", ".txt"}
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    flac = next(a.rglob("*.flac"))
    assert flac.parent.parent.parent.name == "test" and sf.info(flac).samplerate == 16000


def test_each_character_has_its_own_tone() -> None:
    chars = "'abcdefghijklmnopqrstuvwxyz"
    assert len({char_tone_hz(c) for c in chars}) == len(chars)
    audio = render_text("ab", np.random.default_rng(0), noise=0.0)
    spectrum = np.abs(np.fft.rfft(audio[1600:2400]))  # 50 ms inside the first character
    peak_hz = np.argmax(spectrum) * 16000 / 800
    assert abs(peak_hz - char_tone_hz("a")[0]) < 40


@pytest.mark.librispeech
def test_real_librispeech_test_other(tmp_path: Path) -> None:
    root = os.environ.get("ASRKD_LIBRISPEECH_DIR")
    if not root:
        pytest.skip("set ASRKD_LIBRISPEECH_DIR to a LibriSpeech folder with test-other")
    cfg = PrepareConfig(num_jobs=2)
    out = prepare_librispeech(root, ["test-other"], tmp_path, cfg, progress=False)
    cuts = CutSet.from_file(out["test-other"])
    report = json.loads((tmp_path / "prepare_test-other_report.json").read_text())
    assert len(cuts) == report["n_cuts"] >= 0.9 * report["n_transcript_lines"]
    cut = cuts[0]
    assert cut.load_features().shape == (compute_num_frames(cut.duration, 0.01, 16000), 80)
    assert cut.supervisions[0].text.islower()
