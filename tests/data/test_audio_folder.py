"""prepare_audio_folder (`asrkd prepare audio`): untranscribed audio in any layout -> a cut
manifest with stored features, the same checks, policies, report and completion marker as
prepare_librispeech; the manifest trains as data.unlabelled_cuts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet
from lhotse.utils import compute_num_frames

from asrkd.cli import main
from asrkd.config import PrepareConfig
from asrkd.data.audio import fbank_extractor
from asrkd.data.audio_folder import prepare_audio_folder, recording_id
from asrkd.data.validate import DataError
from tests.helpers import render_text, write_flac

GOOD = {"a__b__one", "two", "stereo", "low__eight"}
PROBLEMS = {"bad_audio": 2, "duplicate_id": 1, "multichannel": 1, "too_long": 1, "wrong_rate": 1}
MAX_SECONDS = 4.0


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Good FLAC and WAV in nested folders, a non-audio file, a corrupt and an empty file, a
    stereo file, an 8 kHz file, a file longer than MAX_SECONDS, and two files sharing an id."""
    root = tmp_path / "my audio"
    speech = render_text("the cat sat", np.random.default_rng(0))  # tones at 16 kHz
    write_flac(root / "a" / "b" / "one.flac", speech)
    sf.write(root / "two.wav", speech, 16000)
    (root / "notes.txt").write_text("not audio\n")
    (root / "c").mkdir()
    (root / "c" / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "c" / "empty.wav").write_bytes(b"")
    write_flac(root / "stereo.flac", np.stack([speech, 0.5 * speech], axis=1))
    (root / "low").mkdir()
    sf.write(root / "low" / "eight.wav", speech[::2], 8000)
    write_flac(root / "long.flac", np.tile(speech, int(MAX_SECONDS * 16000 / len(speech)) + 1))
    write_flac(root / "dup.flac", speech)
    sf.write(root / "dup.wav", speech, 16000)
    return root


def _prepare(
    folder: Path, out: Path, max_seconds: float = MAX_SECONDS, **policies
) -> tuple[dict, dict]:
    cfg = PrepareConfig(max_seconds=max_seconds, **policies)
    path = prepare_audio_folder(folder, out, cfg, progress=False)
    report = json.loads((out / f"prepare_{folder.name}_report.json").read_text())
    return {c.id: c for c in CutSet.from_file(path)}, report


def test_audio_folder_checks_reports_and_is_idempotent(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cuts, report = _prepare(folder, out)
    assert set(cuts) == GOOD
    assert report["counts"] == PROBLEMS and report["n_audio_files"] == 9  # not notes.txt
    assert report["n_cuts"] == 4 and report["n_skipped"] == 4  # resampled, downmixed: kept
    for p in report["problems"]:
        assert Path(p["path"]).is_relative_to(folder) and p["reason"]
    assert recording_id(folder, folder / "a" / "b" / "one.flac") == "a__b__one"
    # Features as prepare_librispeech stores them: fbank of the (converted) 16 kHz mono audio.
    one = cuts["a__b__one"]
    assert one.supervisions[0].text == "" and one.recording.sampling_rate == 16000
    audio = sf.read(folder / "a" / "b" / "one.flac", dtype="float32")[0]
    expected = fbank_extractor(PrepareConfig().features).extract(audio, 16000)
    assert one.load_features().shape == (compute_num_frames(one.duration, 0.01, 16000), 80)
    assert np.abs(one.load_features() - expected).max() < 0.1  # lilcom's precision
    for cut in cuts.values():
        assert cut.recording.num_channels == 1 and cut.recording.sampling_rate == 16000
    # The completion marker: the same config reuses the outputs, another recomputes them.
    cuts_file = out / f"cuts_{folder.name}.jsonl.gz"
    stamp = cuts_file.stat().st_mtime_ns
    _prepare(folder, out)
    assert cuts_file.stat().st_mtime_ns == stamp
    cuts, _ = _prepare(folder, out, on_wrong_rate="skip", on_multichannel="skip")
    assert set(cuts) == {"a__b__one", "two"}


@pytest.mark.parametrize(
    ("policy", "name"),
    [
        ("on_bad_audio", "corrupt.flac"),
        ("on_wrong_rate", "eight.wav"),
        ("on_multichannel", "stereo.flac"),
        ("on_too_long", "long.flac"),
    ],
)
def test_fail_policies_name_the_file(folder: Path, tmp_path: Path, policy: str, name: str) -> None:
    with pytest.raises(DataError, match=name):
        _prepare(folder, tmp_path / "out", **{policy: "fail"})


def test_cli_prepare_audio(folder: Path, tmp_path: Path, capsys) -> None:
    for bad in ("c/corrupt.flac", "c/empty.wav", "long.flac", "stereo.flac", "dup.wav"):
        (folder / bad).unlink()
    out = folder / "prepared"  # inside the folder: outputs (converted copies) are not input
    for overrides in ([], ["--set", "max_seconds=20"]):
        assert main(["prepare", "audio", str(folder), "--out", str(out), *overrides]) == 0
        name, path = capsys.readouterr().out.split("\t")
        cuts = CutSet.from_file(path.strip())
        assert name == "my audio" and sorted(cuts.ids) == ["a__b__one", "dup", "low__eight", "two"]
    assert main(["prepare", "audio", str(folder), "--parts", "x", "--out", str(tmp_path)]) == 2
    assert main(["prepare", "librispeech", str(folder), "--out", str(tmp_path)]) == 2
    assert main(["prepare", "audio", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2


def test_linked_folders_are_read_once(folder: Path, tmp_path: Path) -> None:
    """A user's folder that links to other folders: their audio is prepared (the link's path
    gives the recording id), a folder reached by two links once, and a link cycle ends."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a").symlink_to(folder / "a", target_is_directory=True)
    (mine / "again").symlink_to(folder / "a", target_is_directory=True)
    (mine / "loop").symlink_to(mine, target_is_directory=True)
    cuts, report = _prepare(mine, tmp_path / "out")
    assert sorted(cuts) == ["a__b__one"] and report["n_audio_files"] == 1, report


def test_a_distillation_run_takes_the_folder_as_unlabelled_cuts(
    prepared_parts, tiny_teacher, tmp_path: Path, one_thread
) -> None:
    from tests.distill.test_distill_run import assert_run_ok, distil

    # The tone corpus's own test audio, transcripts ignored, as a user's folder of recordings.
    audio_dir = prepared_parts["train"].parent.parent / "LibriSpeech" / "test"
    unlabelled = prepare_audio_folder(audio_dir, tmp_path / "audio", PrepareConfig(), False)
    assert len(CutSet.from_file(unlabelled)) == 10
    overrides = ["distill.strategy=sequence", f"data.unlabelled_cuts={unlabelled}"]
    out, _, seen = distil(prepared_parts, tiny_teacher, tmp_path, overrides)
    assert_run_ok(out, "sequence", ("kd_seq",))
    assert seen["unlabelled"] > 0 and seen["labelled"] > 0


def _untranscribed_dir() -> Path | None:
    if os.environ.get("ASRKD_UNTRANSCRIBED_DIR"):
        return Path(os.environ["ASRKD_UNTRANSCRIBED_DIR"])
    if os.environ.get("ASRKD_LIBRISPEECH_DIR"):
        root = Path(os.environ["ASRKD_LIBRISPEECH_DIR"]).parent / "untranscribed"
        return root / "librispeech-train-clean-100-sample"
    return None


@pytest.mark.librispeech
def test_real_untranscribed_librispeech_sample(tmp_path: Path) -> None:
    root = _untranscribed_dir()
    if root is None or not root.is_dir():
        pytest.skip("set ASRKD_UNTRANSCRIBED_DIR (or ASRKD_LIBRISPEECH_DIR) to real audio")
    files = sorted(root.rglob("*.flac"))
    hours = sum(sf.info(f).duration for f in files) / 3600
    print(f"{root}: {len(files)} files, {hours:.3f} h")
    assert len(files) == 248 and 0.85 < hours < 0.89
    # Features for all 0.87 h take ~30 s of CPU: prepare a subset, a folder of links.
    subset = tmp_path / "subset"
    subset.mkdir()
    for f in files[:: len(files) // 12]:
        (subset / f.name).symlink_to(f)
    cuts, report = _prepare(subset, tmp_path / "out", max_seconds=35.0)
    n = len(list(subset.iterdir()))
    assert len(cuts) == report["n_cuts"] == n and report["problems"] == []
    assert {c.id for c in cuts.values()} == {p.stem for p in subset.iterdir()}
    expected = sum(sf.info(p).duration for p in subset.iterdir())
    assert abs(sum(c.duration for c in cuts.values()) - expected) < 0.01 * n
