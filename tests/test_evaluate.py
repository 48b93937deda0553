"""Evaluation: WER/CER against an independent edit distance and jiwer, result files, decoding."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jiwer
import pytest
from lhotse import CutSet

from asrkd.config import EvalConfig
from asrkd.data.dataset import collate, cut_text, load_cuts
from asrkd.evaluation import decode_cuts, error_rates, evaluate, measure_speed, score, write_results
from asrkd.lexicon import LexiconDecoder, WordLM
from asrkd.models.checkpoint import load_model
from asrkd.transcribe import open_model_file

pytestmark = pytest.mark.usefixtures("one_thread")


def edit_distance(ref: list, hyp: list) -> int:
    """Plain Levenshtein distance (the textbook dynamic programme)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def reference_rates(pairs: list[tuple[str, str]]) -> tuple[float, float]:
    words = sum(edit_distance(r.split(), h.split()) for r, h in pairs)
    chars = sum(edit_distance(list(r), list(h)) for r, h in pairs)
    return words / sum(len(r.split()) for r, _ in pairs), chars / sum(len(r) for r, _ in pairs)


def random_text(rng: random.Random, max_words: int) -> str:
    words = ["a", "cat", "sat", "on", "the", "mat", "dog", "ran"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(0, max_words)))


def test_error_rates_on_random_strings() -> None:
    rng = random.Random(0)
    for _ in range(30):
        pairs = [(random_text(rng, 6), random_text(rng, 6)) for _ in range(rng.randint(1, 6))]
        if not any(r for r, _ in pairs):
            continue
        results = [(f"u{i}", r, h) for i, (r, h) in enumerate(pairs)]
        wer, cer = error_rates(results)
        scored = [(r, h) for r, h in pairs if r]
        want_wer, want_cer = reference_rates(scored)
        assert wer == pytest.approx(want_wer) and cer == pytest.approx(want_cer)
        refs, hyps = [r for r, _ in scored], [h for _, h in scored]
        assert wer == pytest.approx(jiwer.wer(refs, hyps))
        assert cer == pytest.approx(jiwer.cer(refs, hyps))


HAND = [
    ("u1", "the cat sat", "the bat sat down"),  # 1 substitution, 1 insertion
    ("u2", "a dog", "dog"),  # 1 deletion
    ("u3", "", "noise"),  # no reference: not scored
]


def test_hand_computed_case() -> None:
    # Words: (1 + 1 + 1) errors / (3 + 2) reference words = 0.6.
    # Characters: "the cat sat" -> "the bat sat down": 1 substitution + 5 insertions (" down");
    # "a dog" -> "dog": 2 deletions ("a "). (6 + 2) / (11 + 5) = 0.5.
    wer, cer = error_rates(HAND)
    assert wer == pytest.approx(0.6) and cer == pytest.approx(0.5)
    s = score(HAND)
    assert s["wer"] == pytest.approx(0.6) and s["cer"] == pytest.approx(0.5)
    assert (s["substitutions"], s["deletions"], s["insertions"]) == (1, 1, 1)
    assert s["n_words"] == 5 and s["n_utterances"] == 2


def test_no_reference_at_all_is_an_error() -> None:
    with pytest.raises(ValueError, match="no utterance with a reference"):
        error_rates([("u", "", "hello")])


def test_result_files(tmp_path: Path) -> None:
    summary = write_results(HAND, tmp_path, "test-clean", "greedy")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "errors-test-clean-greedy.txt",
        "hyps-test-clean-greedy.txt",
        "wer-test-clean-greedy.json",
    ]
    hyps = (tmp_path / "hyps-test-clean-greedy.txt").read_text().splitlines()
    assert hyps == ["u1\tthe cat sat\tthe bat sat down", "u2\ta dog\tdog", "u3\t\tnoise"]
    errors = (tmp_path / "errors-test-clean-greedy.txt").read_text()
    assert errors.index("u1: 2 word errors") < errors.index("u2: 1 word errors")  # worst first
    assert "u3" not in errors
    assert json.loads((tmp_path / "wer-test-clean-greedy.json").read_text()) == summary
    assert summary == score(HAND)


def test_decode_and_evaluate_a_trained_model(
    tiny_teacher: Path, prepared_parts: dict[str, Path], tmp_path: Path
) -> None:
    model, tok = load_model(tiny_teacher)
    cuts = load_cuts(prepared_parts["test"])
    model.train()
    results = decode_cuts(model, cuts, tok, batch_seconds=5.0)
    assert model.training  # mode restored
    assert [r[0] for r in results] == sorted(cuts.ids)
    assert all(ref == ref.lower() and ref for _, ref, _ in results)
    assert error_rates(results)[0] < 0.5  # the teacher learnt the tone alphabet
    # Decoding does not depend on how cuts are batched.
    assert decode_cuts(model, cuts, tok, batch_seconds=100.0) == results

    summary = evaluate(
        tiny_teacher, [prepared_parts["test"]], tmp_path, EvalConfig(), measure=False
    )
    assert summary["sets"]["test"]["wer"] == pytest.approx(error_rates(results)[0])
    assert summary["n_params"] == model.n_params()
    assert json.loads((tmp_path / "summary.json").read_text())["sets"] == summary["sets"]
    assert (tmp_path / "hyps-test-greedy.txt").is_file()

    speed = measure_speed(open_model_file(tiny_teacher), cuts, EvalConfig(latency_utterances=3))
    assert speed["latency_utterances"] == 3 and speed["rtf"] > 0
    # the RTF is the network's and the decoder's the WER is scored with, together
    assert speed["rtf"] == pytest.approx(speed["network_rtf"] + speed["decoder_rtf"])
    assert speed["decoder"] == "greedy" and speed["decoder_rtf"] > 0
    lex_cfg = EvalConfig(latency_utterances=3, decoder="lexicon")
    lexicon = LexiconDecoder(tok, WordLM.from_texts(cut_text(c) for c in cuts))
    lex_speed = measure_speed(open_model_file(tiny_teacher), cuts, lex_cfg, lexicon)
    assert lex_speed["decoder"].startswith("lexicon-b8") and lex_speed["decoder_rtf"] > 0


def test_memory_probes_fix_mallocs_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's process gets a fixed mmap threshold (glibc otherwise moves it, and the same
    model's peak spread 87-134 MB); a value the user set is kept."""
    from asrkd.evaluation import PROBE_MMAP_THRESHOLD, probe_env

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    env = probe_env()
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(PROBE_MMAP_THRESHOLD)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert probe_env()["MALLOC_MMAP_THRESHOLD_"] == "65536"


def test_inference_processes_limit_onednns_kernel_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """`asrkd transcribe`/`evaluate` and the memory probe keep oneDNN's and ideep's per-shape
    caches small (utterances one at a time never reuse a shape); a value the user set is kept."""
    from asrkd.evaluation import probe_env
    from asrkd.precision import INFERENCE_ENV, limit_kernel_cache

    key, ideep = "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"
    monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv(ideep, raising=False)
    assert probe_env()[key] == INFERENCE_ENV[key] == "16"
    assert probe_env()[ideep] == INFERENCE_ENV[ideep] == "16"
    assert limit_kernel_cache({}) == {key: "16", ideep: "16"}
    assert limit_kernel_cache({key: "1024"}) == {key: "1024", ideep: "16"}
    monkeypatch.setenv(key, "256")
    assert probe_env()[key] == "256"


def test_bf16_precision_evaluates_in_bfloat16_with_float32_outputs(
    tiny_teacher: Path, prepared_parts: dict[str, Path], tmp_path: Path
) -> None:
    """eval.precision=bf16: the model file's layers compute in bfloat16 (weights stay float32),
    its logits come out float32, the WER is the float32 one's within bfloat16's rounding, and
    the summary says which arithmetic ran; any other precision is refused."""
    import torch

    from asrkd.config import ConfigError

    cuts = load_cuts(prepared_parts["test"])
    seen: dict[str, set] = {}
    logits: dict[str, torch.Tensor] = {}
    for precision in ("fp32", "bf16"):
        model = open_model_file(tiny_teacher, precision=precision)
        assert model.precision == precision
        dtypes: set = set()
        hooks = [
            m.register_forward_hook(lambda _m, _i, out, s=dtypes: s.add(out.dtype))
            for m in model.model.modules()
            if isinstance(m, torch.nn.Linear)
        ]
        b = collate(CutSet.from_cuts([next(iter(cuts))]), model.tokenizer)
        logits[precision], _ = model.forward(b.feats, b.feat_lens)
        for h in hooks:
            h.remove()
        seen[precision] = dtypes
        assert logits[precision].dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in model.model.parameters())
    assert seen == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    agree = (logits["fp32"].argmax(-1) == logits["bf16"].argmax(-1)).float().mean()
    assert agree > 0.9

    summaries = {
        p: evaluate(tiny_teacher, [prepared_parts["test"]], tmp_path / p, EvalConfig(precision=p),
                    measure=False)
        for p in ("fp32", "bf16")
    }  # fmt: skip
    assert summaries["bf16"]["precision"] == "bf16" and summaries["fp32"]["precision"] == "fp32"
    wers = [s["sets"]["test"]["wer"] for s in summaries.values()]
    assert abs(wers[0] - wers[1]) < 0.05, wers
    with pytest.raises(ConfigError, match="eval.precision='fp16' is not one of fp32, bf16, auto"):
        EvalConfig(precision="fp16")
