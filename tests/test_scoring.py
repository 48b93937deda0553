"""asrkd.scoring: the paired bootstrap over utterances that says how sure a WER difference is."""

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
