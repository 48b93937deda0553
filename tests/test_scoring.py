"""asrkd.scoring: the paired bootstrap over utterances that says how sure a WER difference is, and
the demo report's use of it."""

from __future__ import annotations

import pytest

from asrkd.scoring import paired_bootstrap, read_results, write_results

REFS = [f"the cat sat on mat number {i}" for i in range(40)]


def results(hyps: list[str]) -> list[tuple[str, str, str]]:
    return [(f"u{i}", ref, hyp) for i, (ref, hyp) in enumerate(zip(REFS, hyps))]


def test_identical_systems_differ_by_nothing() -> None:
    a = results([r.replace("cat", "hat") for r in REFS])
    out = paired_bootstrap(a, a, rounds=500)
    assert out["difference"] == 0 and out["ci95"] == (0.0, 0.0) and out["b_better"] == 0.0
    assert out["n_utterances"] == 40 and out["n_words"] == 280


def test_a_system_better_on_every_utterance_is_surely_better(tmp_path) -> None:
    worse = results([r.replace("cat", "hat").replace("mat", "") for r in REFS])  # 2 errors of 7
    better = results([r.replace("cat", "hat") if i % 2 else r for i, r in enumerate(REFS)])
    out = paired_bootstrap(worse, better, rounds=2000, seed=1)
    assert out["wer_a"] == pytest.approx(2 / 7) and out["wer_b"] == pytest.approx(20 / 280)
    lo, hi = out["ci95"]
    assert lo <= out["difference"] <= hi < 0 and out["b_better"] == 1.0
    # the same answer from the files asrkd evaluate writes, the order of lines aside
    write_results(worse, tmp_path, "test", "greedy")
    write_results(better[::-1], tmp_path / "b", "test", "greedy")
    again = paired_bootstrap(
        read_results(tmp_path / "hyps-test-greedy.txt"),
        read_results(tmp_path / "b" / "hyps-test-greedy.txt"),
        rounds=2000,
        seed=1,
    )
    assert again["difference"] == pytest.approx(out["difference"])


def test_mixed_differences_give_an_interval_around_zero() -> None:
    """Half the utterances better, half worse by the same count: the interval spans zero."""
    a = results([r.replace("cat", "hat") if i % 2 else r for i, r in enumerate(REFS)])
    b = results([r if i % 2 else r.replace("cat", "hat") for i, r in enumerate(REFS)])
    out = paired_bootstrap(a, b, rounds=2000)
    lo, hi = out["ci95"]
    assert out["difference"] == 0 and lo < 0 < hi and 0.2 < out["b_better"] < 0.8


def test_utterances_missing_from_the_second_system_are_named() -> None:
    a = results(REFS)
    with pytest.raises(ValueError, match="1 utterances of the first system missing.*u39"):
        paired_bootstrap(a, a[:-1])


def test_the_demo_reports_its_comparisons_with_their_interval(tmp_path) -> None:
    """The targets of `asrkd demo` give the distilled student's WER change against the student
    without KD with the paired interval of their transcripts files; none without the files."""
    from asrkd.demo_scoring import add_relative
    from asrkd.demo_targets import target_lines

    def student(variant: str, hyps: list[str]) -> dict:
        folder = tmp_path / variant
        write_results(results(hyps), folder, "test", "greedy")
        wer = paired_bootstrap(results(REFS), results(hyps), rounds=10)["wer_b"]
        return {"name": f"full-demo-student-{variant}", "scenario": "full", "variant": variant,
                "preset": "demo-student", "format": "safetensors", "wer": wer, "cer": wer,
                "dev_wer": wer, "mb": 4.0, "params": 1e6, "memory_mb": 50.0, "rtf": 0.01,
                "hyps": str(folder / "hyps-test-greedy.txt")}  # fmt: skip

    teacher = {"name": "teacher", "scenario": "teacher", "variant": "none", "preset": "demo-teacher",
               "format": "safetensors", "wer": 0.1, "cer": 0.1, "dev_wer": 0.1, "mb": 8.0,
               "params": 2e6, "memory_mb": 100.0, "rtf": 0.02, "hyps": None}  # fmt: skip
    rows = [
        teacher,
        student("none", [r.replace("cat", "hat").replace("mat", "") for r in REFS]),
        student("logit", [r.replace("cat", "hat") for r in REFS]),
    ]
    add_relative(rows)
    (line,) = [x for x in target_lines(rows) if x.startswith("- (a)")]
    assert "-50.0% WER (14.3% vs 28.6%; difference -14.3 WER points, 95 % interval over the " \
           "test utterances [-14.3, -14.3])" in line  # fmt: skip
    rows[1]["hyps"] = None  # results measured before the files were kept: no interval
    (line,) = [x for x in target_lines(rows) if x.startswith("- (a)")]
    assert "(14.3% vs 28.6%)" in line and "interval" not in line


def test_the_recipe_holds_its_delivered_file_to_the_first_target() -> None:
    """The real-speech recipe's first target is judged on the best distilled student (by dev
    WER) and again on the int8 file exported from it, scored as delivered; a file exported from
    another student gets no line."""
    from asrkd.demo_scoring import add_relative
    from asrkd.demo_targets import external_target_lines

    def row(
        variant: str,
        wer: float,
        dev: float,
        fmt: str = "safetensors",
        rtf: float = 0.006,
        strategy: str = "none",
        teacher: bool = True,
    ) -> dict:
        return {"name": f"full-s-{variant}", "scenario": "full", "variant": variant,
                "preset": "s", "format": fmt, "strategy": strategy, "uses_teacher": teacher,
                "wer": wer, "cer": wer, "dev_wer": dev, "mb": 38.0, "params": 9.4e6,
                "memory_mb": 220.0, "rtf": rtf, "hyps": None}  # fmt: skip

    teacher = {"name": "teacher-faster-whisper-int8", "scenario": "teacher", "variant": "none",
               "preset": "tiny", "format": "faster-whisper-int8", "wer": 0.152, "cer": 0.07,
               "dev_wer": None, "mb": 151.0, "params": 37.76e6, "memory_mb": 216.0,
               "rtf": 0.0368, "hyps": None}  # fmt: skip
    rows = [
        teacher,
        row("none", 0.906, 0.99, teacher=False),
        row("init", 0.393, 0.203),
        row("init-seq", 0.393, 0.188, strategy="sequence"),
        row("init-seq-int8", 0.375, 0.188, "onnx-int8", 0.0046, "sequence"),
    ]
    add_relative(rows)
    lines = external_target_lines(rows)
    assert "(by dev WER, decoded as test is) full-s-init-seq: WER 39.3% = 2.59x" in lines[0]
    assert lines[0].endswith("**not reached**")
    assert lines[1] == (
        "  - as delivered (full-s-init-seq-int8, onnx-int8): WER 37.5% = 2.47x the teacher's, "
        "8.0x its speed: **reached**"
    )
    for variant in ("init", "init-seq-hidden"):  # exported from another student: no line
        rows[-1].update(name=f"full-s-{variant}-int8", variant=f"{variant}-int8")
        assert not any("as delivered" in x for x in external_target_lines(rows))
