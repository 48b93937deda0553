"""Every kind of bad corpus input, under each policy: what prepare_librispeech keeps, what it
reports (file + reason in prepare_<part>_report.json) and that "fail" raises DataError naming the
file. The rows of docs/reliability.md come from these tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet
from lhotse.cut import Cut

from asrkd.config import PrepareConfig
from asrkd.data.librispeech import DataError, prepare_librispeech
from tests.helpers import write_flac, write_librispeech_tree

N_UTTS = 4  # two speakers (chapters) with two utterances each


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_librispeech_tree(tmp_path / "src", {"dev": N_UTTS}, n_speakers=2, seed=1)


def _flacs(corpus: Path) -> list[Path]:
    return sorted(corpus.rglob("*.flac"))


def _trans(flac: Path) -> Path:
    return next(flac.parent.glob("*.trans.txt"))


def _set_text(flac: Path, text: str) -> None:
    """Replace the transcript line of one utterance (text '' -> a line with only the id)."""
    trans = _trans(flac)
    lines = [
        f"{flac.stem} {text}".strip() if line.split()[0] == flac.stem else line
        for line in trans.read_text().splitlines()
    ]
    trans.write_text("\n".join(lines) + "\n")


def _prepare(corpus: Path, out: Path, **policies) -> tuple[dict[str, Cut], dict]:
    """Cuts by id, and the report."""
    cfg = PrepareConfig(**policies)
    paths = prepare_librispeech(corpus, ["dev"], out, cfg, progress=False)
    report = json.loads((out / "prepare_dev_report.json").read_text())
    return {cut.id: cut for cut in CutSet.from_file(paths["dev"])}, report


def _only_problem(report: dict, kind: str) -> dict:
    assert [p["kind"] for p in report["problems"]] == [kind], report["problems"]
    assert report["counts"] == {kind: 1}
    return report["problems"][0]


def _feats(cuts: dict[str, Cut], utt_id: str) -> np.ndarray:
    return cuts[utt_id].load_features()


@pytest.mark.parametrize(
    ("breaker", "reason"),
    [
        (lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]), "lost sync"),
        (lambda f: f.write_bytes(np.random.default_rng(0).bytes(3000)), "not recognised"),
        (lambda f: f.write_bytes(b""), "zero-length file"),
        (lambda f: sf.write(f, np.zeros(0), 16000, format="WAV"), "zero-length audio"),
    ],
    ids=["truncated", "random-bytes", "zero-bytes", "zero-samples"],
)
def test_bad_audio_skipped_or_fails(corpus: Path, tmp_path: Path, breaker, reason: str) -> None:
    bad = _flacs(corpus)[0]
    breaker(bad)
    cuts, report = _prepare(corpus, tmp_path / "skip")
    problem = _only_problem(report, "bad_audio")
    assert problem["path"] == str(bad) and reason in problem["reason"]
    assert problem["action"] == "skipped" and bad.stem not in cuts
    assert len(cuts) == report["n_cuts"] == N_UTTS - 1
    with pytest.raises(DataError, match=re.escape(bad.name)):
        _prepare(corpus, tmp_path / "fail", on_bad_audio="fail")


@pytest.mark.parametrize("rate", [8000, 44100])
def test_wrong_rate_is_resampled_and_features_match(corpus: Path, tmp_path: Path, rate) -> None:
    reference, _ = _prepare(corpus, tmp_path / "ref")
    bad = _flacs(corpus)[0]
    audio, _ = sf.read(bad)
    t_new = np.arange(round(len(audio) * rate / 16000)) / rate
    write_flac(bad, np.interp(t_new, np.arange(len(audio)) / 16000, audio), rate)
    cuts, report = _prepare(corpus, tmp_path / "out")
    problem = _only_problem(report, "wrong_rate")
    assert f"{rate} Hz" in problem["reason"] and problem["action"] == "resampled"
    cut = cuts[bad.stem]
    assert (
        cut.recording.sampling_rate == 16000
        and "converted_audio_dev" in cut.recording.sources[0].source
    )
    ref, got = _feats(reference, bad.stem), _feats(cuts, bad.stem)
    n = min(len(ref), len(got))
    assert abs(len(ref) - len(got)) <= 1
    low_bins = slice(0, 45)  # < ~3.7 kHz: the tones, present at every rate
    assert np.corrcoef(ref[:n, low_bins].ravel(), got[:n, low_bins].ravel())[0, 1] > 0.95
    skipped, _ = _prepare(corpus, tmp_path / "skip", on_wrong_rate="skip")
    assert sorted(skipped) == sorted(c for c in cuts if c != bad.stem)
    with pytest.raises(DataError, match=re.escape(bad.name) + ".*sample rate"):
        _prepare(corpus, tmp_path / "fail", on_wrong_rate="fail")


def test_stereo_is_downmixed_by_channel_mean(corpus: Path, tmp_path: Path) -> None:
    reference, _ = _prepare(corpus, tmp_path / "ref")
    bad = _flacs(corpus)[1]
    audio, _ = sf.read(bad)
    write_flac(bad, np.stack([audio, 0.5 * audio], axis=1))
    cuts, report = _prepare(corpus, tmp_path / "out")
    problem = _only_problem(report, "multichannel")
    assert "2 channels" in problem["reason"] and problem["action"] == "downmixed"
    assert cuts[bad.stem].recording.num_channels == 1
    ref, got = _feats(reference, bad.stem), _feats(cuts, bad.stem)
    loud = ref > np.quantile(ref, 0.9)  # mean of (x, x/2) = 0.75 x: log power - 0.575
    assert np.median(got[loud] - ref[loud]) == pytest.approx(2 * np.log(0.75), abs=0.05)
    skipped, _ = _prepare(corpus, tmp_path / "skip", on_multichannel="skip")
    assert bad.stem not in skipped and len(skipped) == N_UTTS - 1
    with pytest.raises(DataError, match=re.escape(bad.name) + ".*2 channels"):
        _prepare(corpus, tmp_path / "fail", on_multichannel="fail")


def test_chapter_without_transcript(corpus: Path, tmp_path: Path) -> None:
    chapter = _flacs(corpus)[0].parent
    _trans(_flacs(corpus)[0]).unlink()
    cuts, report = _prepare(corpus, tmp_path / "skip")
    problem = _only_problem(report, "missing_transcript")
    assert problem["path"] == str(chapter) and "2 audio files have no text" in problem["reason"]
    assert len(cuts) == N_UTTS - 2 and report["n_audio_files_unused"] == 2
    with pytest.raises(DataError, match=re.escape(str(chapter)) + ".*no \\*.trans.txt"):
        _prepare(corpus, tmp_path / "fail", on_bad_text="fail")


def test_transcript_line_without_audio(corpus: Path, tmp_path: Path) -> None:
    gone = _flacs(corpus)[0]
    gone.unlink()
    cuts, report = _prepare(corpus, tmp_path / "skip")
    problem = _only_problem(report, "missing_audio")
    assert problem["path"] == str(gone) and "has no audio file" in problem["reason"]
    assert len(cuts) == N_UTTS - 1
    with pytest.raises(DataError, match=re.escape(gone.name)):
        _prepare(corpus, tmp_path / "fail", on_bad_text="fail")


def test_audio_not_listed_in_transcript(corpus: Path, tmp_path: Path) -> None:
    extra = _flacs(corpus)[0].with_name(_flacs(corpus)[0].stem[:-4] + "0099.flac")
    extra.write_bytes(_flacs(corpus)[0].read_bytes())
    cuts, report = _prepare(corpus, tmp_path / "skip")
    assert _only_problem(report, "unlisted_audio")["path"] == str(extra)
    assert len(cuts) == N_UTTS


@pytest.mark.parametrize("text", ["", "... !!"], ids=["no-text", "punctuation-only"])
def test_empty_transcript(corpus: Path, tmp_path: Path, text: str) -> None:
    bad = _flacs(corpus)[0]
    _set_text(bad, text)
    cuts, report = _prepare(corpus, tmp_path / "skip")
    problem = _only_problem(report, "empty_text")
    assert problem["utt_id"] == bad.stem and "empty transcript" in problem["reason"]
    assert bad.stem not in cuts
    with pytest.raises(DataError, match=re.escape(bad.name) + ".*empty transcript"):
        _prepare(corpus, tmp_path / "fail", on_bad_text="fail")


@pytest.mark.parametrize("policy", ["drop", "skip", "fail"])
def test_characters_outside_vocabulary(corpus: Path, tmp_path: Path, policy: str) -> None:
    bad = _flacs(corpus)[0]
    _set_text(bad, "HAT 2 BOX ÆON")  # digits and Æ: normalize_text would silently lose them
    if policy == "fail":
        with pytest.raises(DataError, match=re.escape(bad.name) + ".*'2æ'"):
            _prepare(corpus, tmp_path / "out", on_oov_chars="fail")
        return
    cuts, report = _prepare(corpus, tmp_path / "out", on_oov_chars=policy)
    problem = _only_problem(report, "oov_chars")
    assert "outside the vocabulary: '2æ'" in problem["reason"]
    if policy == "drop":
        assert problem["action"] == "dropped characters"
        assert cuts[bad.stem].supervisions[0].text == "hat box on"
        assert cuts[bad.stem].supervisions[0].custom["orig_text"] == "HAT 2 BOX ÆON"
    else:
        assert problem["action"] == "skipped" and bad.stem not in cuts


def test_sixty_second_utterance(corpus: Path, tmp_path: Path) -> None:
    bad = _flacs(corpus)[0]
    audio, _ = sf.read(bad)
    write_flac(bad, np.tile(audio, int(np.ceil(60 * 16000 / len(audio))))[: 60 * 16000])
    cuts, report = _prepare(corpus, tmp_path / "skip")
    problem = _only_problem(report, "too_long")
    assert "60.0 s is longer than prepare.max_seconds=30" in problem["reason"]
    assert bad.stem not in cuts
    assert bad.stem in _prepare(corpus, tmp_path / "long", max_seconds=61.0)[0]
    with pytest.raises(DataError, match=re.escape(bad.name) + ".*max_seconds"):
        _prepare(corpus, tmp_path / "fail", on_too_long="fail")


@pytest.mark.parametrize("same_text", [True, False])
def test_duplicate_ids(corpus: Path, tmp_path: Path, same_text: bool) -> None:
    bad = _flacs(corpus)[0]
    trans = _trans(bad)
    line = next(ln for ln in trans.read_text().splitlines() if ln.startswith(bad.stem))
    dup = line if same_text else f"{bad.stem} A DIFFERENT TEXT"
    trans.write_text(trans.read_text() + dup + "\n")
    cuts, report = _prepare(corpus, tmp_path / "skip")
    problem = _only_problem(report, "duplicate_id")
    assert f"{bad.stem} appears 2 times" in problem["reason"]
    assert (bad.stem in cuts) == same_text
    assert problem["action"] == ("kept one copy" if same_text else "skipped")
    assert len(cuts) == N_UTTS - (0 if same_text else 1)
    with pytest.raises(DataError, match=re.escape(bad.name) + ".*appears 2 times"):
        _prepare(corpus, tmp_path / "fail", on_bad_text="fail")


def test_transcript_too_long_for_ctc_frames(corpus: Path, tmp_path: Path) -> None:
    bad = _flacs(corpus)[0]
    _set_text(bad, " ".join(["JOLLY BOOKS"] * 20))  # ~230 tokens + 60 repeats for ~1.5 s
    cuts, report = _prepare(corpus, tmp_path / "skip")
    problem = _only_problem(report, "too_short_for_ctc")
    assert "CTC frames after 4x subsampling" in problem["reason"]
    assert bad.stem not in cuts
    with pytest.raises(DataError, match=re.escape(bad.name) + ".*CTC frames"):
        _prepare(corpus, tmp_path / "fail", on_too_long="fail")


def test_part_without_usable_utterances_is_an_error(corpus: Path, tmp_path: Path) -> None:
    for flac in _flacs(corpus):
        flac.write_bytes(b"")
    with pytest.raises(DataError, match="no usable utterances"):
        _prepare(corpus, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "prepare_dev_report.json").read_text())
    assert report["counts"] == {"bad_audio": N_UTTS} and report["n_cuts"] == 0
