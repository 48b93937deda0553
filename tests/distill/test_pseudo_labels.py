"""distill.max_pseudo_wer: teacher transcripts over the WER threshold (against the utterance's own
transcript) are dropped from sequence KD, exactly those; unmappable ones are counted; loops
(distill.max_pseudo_compression) and transcripts CTC cannot align are dropped on any utterance."""

from __future__ import annotations

import pytest
import torch

from asrkd.data.text import Tokenizer
from asrkd.data.validate import ctc_min_frames
from asrkd.distill.pseudo_labels import (
    LEFT_OUT_FILE,
    compression_ratio,
    filter_pseudo_labels,
    pseudo_label_wer,
)
from asrkd.distill.strategies import SequenceKD
from asrkd.distill.teachers import TeacherOutput
from asrkd.models.conformer import ModelOutput

REFS = {"a": "the cat sat on the mat", "b": "the cat sat on the mat", "c": "one two three four"}
REFS |= {"d": "a b c d e f g h i j", "e": "a b c d e f g h i j"}
TEXTS = {
    "a": "the cat sat on the mat",  # WER 0
    "b": "the cat sat on a mat",  # 1/6 = 0.167
    "c": "one two three",  # 1/4 = 0.25
    "d": "a b c d e f g h i x",  # 1/10 = 0.1: kept at 0.1 (not over)
    "e": "a b c d e f g h x x",  # 0.2
    "u": "anything at all",  # untranscribed: never checked
    "n": None,  # unmappable
}


@pytest.mark.parametrize(
    "max_wer, dropped",
    [(0.0, set()), (0.1, {"b", "c", "e"}), (0.2, {"c"}), (0.25, set()), (0.15, {"b", "c", "e"})],
)
def test_drops_exactly_those_over_the_threshold(max_wer: float, dropped: set[str]) -> None:
    kept, stats = filter_pseudo_labels(TEXTS, REFS, max_wer)
    assert set(stats.over_wer) == dropped
    assert {k for k, v in kept.items() if v is None} == dropped | {"n"}
    assert stats.unmappable == ["n"]
    assert all(kept[k] == TEXTS[k] for k in TEXTS if k not in dropped)
    assert stats.n_checked == (5 if max_wer else 0)
    summary = stats.summary()
    assert summary["pseudo_labels_over_max_wer"] == (len(dropped) if max_wer else None)
    assert summary["pseudo_labels_unmappable"] == 1
    assert summary["pseudo_labels_repetitive"] is summary["pseudo_labels_too_long"] is None


def test_the_list_names_each_left_out_transcript(tmp_path) -> None:
    _, stats = filter_pseudo_labels(TEXTS, REFS, 0.1)
    stats.write_tsv(tmp_path / LEFT_OUT_FILE)
    lines = (tmp_path / LEFT_OUT_FILE).read_text().splitlines()
    assert lines[0] == "cut_id\treason\twer\tteacher\treference"
    assert sorted(lines[1:]) == [
        "b\tover_max_wer\t0.167\tthe cat sat on a mat\tthe cat sat on the mat",
        "c\tover_max_wer\t0.250\tone two three\tone two three four",
        "e\tover_max_wer\t0.200\ta b c d e f g h x x\ta b c d e f g h i j",
        "n\tunmappable\t\t\t",
    ]


LOOP = "thank you " * 12  # Whisper on silence or music


def test_loops_and_unalignable_transcripts_are_dropped_with_or_without_a_transcript() -> None:
    """A loop is dropped before its WER is looked at, an untranscribed one too; a transcript
    longer than its utterance's frames allow (one per unit, a blank between repeats) is
    dropped; the list names each with its reason and, where checked, its WER."""
    texts = {**TEXTS, "loop": LOOP.strip(), "loop-ref": LOOP.strip(), "long": "abcdefgh"}
    texts |= {"fits": "abcdefg", "repeats": "aab"}  # "aab" needs 4 frames: a blank between a, a
    refs = {**REFS, "loop-ref": "thank you"}
    frames = {"long": 7, "fits": 7, "repeats": 3}

    def fits(cut_id: str, text: str) -> bool:
        return ctc_min_frames([ord(ch) for ch in text]) <= frames.get(cut_id, 10**6)

    kept, stats = filter_pseudo_labels(texts, refs, 0.1, 2.4, fits)
    assert stats.left_out == {
        "unmappable": ["n"],
        "repetitive": ["loop", "loop-ref"],
        "too_long": ["long", "repeats"],
        "over_max_wer": ["b", "c", "e"],
    }
    assert {k for k, v in kept.items() if v is None} == {
        "n", "loop", "loop-ref", "long", "repeats", "b", "c", "e"
    }  # fmt: skip
    assert kept["fits"] == "abcdefg" and kept["u"] == "anything at all"
    assert stats.n_checked == 5  # the loop with a transcript is not checked for WER
    summary = stats.summary()
    assert (summary["pseudo_labels_repetitive"], summary["pseudo_labels_too_long"]) == (2, 2)
    # off: kept, and counted as not checked
    kept, stats = filter_pseudo_labels(texts, refs, 0.0, 0.0, None)
    assert stats.n_left_out == 1 and kept["loop"] == LOOP.strip()
    assert stats.summary()["pseudo_labels_repetitive"] is None
    assert compression_ratio(LOOP) > 2.4 > max(compression_ratio(t) for t in REFS.values())


def test_wer_of_one_transcript() -> None:
    assert pseudo_label_wer("a b", "a b c d") == 0.5
    assert pseudo_label_wer("", "") == 0.0 and pseudo_label_wer("x", "") == 1.0


def test_a_dropped_transcript_adds_nothing_to_sequence_kd() -> None:
    tok = Tokenizer()
    torch.manual_seed(0)
    logits = torch.randn(3, 30, tok.vocab_size)
    student = ModelOutput(logits=logits, lengths=torch.tensor([30, 30, 20]), hidden_states=[])
    kd = SequenceKD(tok)
    both = TeacherOutput(transcripts=["the cat", None, "a dog"])
    alone = TeacherOutput(transcripts=["the cat", "a dog"])
    pair = ModelOutput(logits=logits[[0, 2]], lengths=torch.tensor([30, 20]), hidden_states=[])
    torch.testing.assert_close(kd(student, both, None)["kd_seq"], kd(pair, alone, None)["kd_seq"])


def test_a_run_reports_what_it_dropped(prepared_parts, tiny_teacher, tmp_path, one_thread) -> None:
    """A sequence-KD run with distill.max_pseudo_wer writes the counts into summary.json: those
    of its teacher's cached transcripts over the threshold against the cuts' own text. Three
    cached transcripts are made wrong before the run: how many the tiny teacher gets wrong by
    itself depends on the CPU's kernels (none on an AMX machine, some on an AVX512 one)."""
    import json

    from lhotse import CutSet

    from asrkd.config import load_config
    from asrkd.data.dataset import cut_text
    from asrkd.data.text import normalize_text
    from asrkd.training import Trainer
    from tests.conftest import tiny_run_overrides

    kd = [
        "distill.strategy=sequence",
        f"teacher.path={tiny_teacher}",
        f"teacher.cache_dir={tmp_path / 'cache'}",
        "distill.max_pseudo_wer=0.1",
    ]
    Trainer(load_config(None, tiny_run_overrides(prepared_parts, tmp_path / "pre", 10) + kd))
    (index,) = (tmp_path / "cache").glob("*/index.json")  # the teacher's cache, now built
    record = json.loads(index.read_text())
    for cut_id in sorted(record["texts"])[:3]:
        record["texts"][cut_id] = "zebra quiz"  # in the student's letters, far from any truth
    index.write_text(json.dumps(record))
    trainer = Trainer(
        load_config(None, tiny_run_overrides(prepared_parts, tmp_path / "run", 10) + kd)
    )
    trainer.run()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    texts = json.loads(index.read_text())["texts"]
    cuts = CutSet.from_file(prepared_parts["train"])
    over = [c.id for c in cuts if pseudo_label_wer(texts[c.id], normalize_text(cut_text(c))) > 0.1]
    assert summary["pseudo_labels_checked"] == len(cuts)
    assert summary["pseudo_labels_over_max_wer"] == len(over)
    assert summary["pseudo_labels_unmappable"] == 0
    assert all(trainer.teacher_source.caches[0].texts[i] is None for i in over)
    # and names each one beside its WER and both texts
    listed = (tmp_path / "run" / LEFT_OUT_FILE).read_text().splitlines()
    assert listed[0].split("\t") == ["cut_id", "reason", "wer", "teacher", "reference"]
    rows = {r.split("\t")[0]: r.split("\t") for r in listed[1:]}
    assert set(sorted(texts)[:3]) <= set(over) and set(rows) == set(over)
    for cut in (c for c in cuts if c.id in rows):
        _, reason, wer, teacher, ref = rows[cut.id]
        assert reason == "over_max_wer" and teacher == texts[cut.id]
        assert ref == normalize_text(cut_text(cut)) and float(wer) > 0.1


def test_loops_and_unalignable_transcripts_are_left_out_of_a_run(
    prepared_parts, tiny_teacher, tmp_path, one_thread
) -> None:
    """A sequence-KD run with the loop and length checks and no WER filter: a cached transcript
    made a loop, and one made one letter longer than its batch's student output frames, are
    left out, counted in summary.json and named in the list; one exactly as long is kept."""
    import json
    import random

    from lhotse import CutSet

    from asrkd.config import load_config
    from asrkd.data.dataset import collate, load_cuts
    from asrkd.data.text import Tokenizer
    from asrkd.training import Trainer
    from tests.conftest import tiny_run_overrides

    kd = [
        "distill.strategy=sequence",
        f"teacher.path={tiny_teacher}",
        f"teacher.cache_dir={tmp_path / 'cache'}",
    ]
    pre = Trainer(load_config(None, tiny_run_overrides(prepared_parts, tmp_path / "pre", 10) + kd))
    (index,) = (tmp_path / "cache").glob("*/index.json")
    record = json.loads(index.read_text())
    loop_id, long_id, edge_id = sorted(record["texts"])[:3]
    cuts = {c.id: c for c in load_cuts(prepared_parts["train"])}

    def out_frames(cut_id: str) -> int:  # as a training batch gives them to the student
        feat_lens = collate(CutSet.from_cuts([cuts[cut_id]]), Tokenizer()).feat_lens
        return int(pre.model.output_lengths(feat_lens)[0])

    def no_repeats(n: int) -> str:  # letters without a pattern and no letter twice in a row
        rng, text = random.Random(n), ""
        while len(text) < n:
            text += rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if text[-1:] != c])
        return text

    record["texts"][loop_id] = LOOP.strip()
    record["texts"][long_id] = no_repeats(out_frames(long_id) + 1)
    record["texts"][edge_id] = no_repeats(out_frames(edge_id))
    index.write_text(json.dumps(record))
    trainer = Trainer(
        load_config(None, tiny_run_overrides(prepared_parts, tmp_path / "run", 10) + kd)
    )
    trainer.run()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["pseudo_labels_repetitive"] == 1 and summary["pseudo_labels_too_long"] == 1
    assert summary["pseudo_labels_unmappable"] == 0
    assert summary["pseudo_labels_over_max_wer"] is None  # distill.max_pseudo_wer off
    texts = trainer.teacher_source.caches[0].texts
    assert texts[loop_id] is None and texts[long_id] is None
    assert texts[edge_id] == record["texts"][edge_id]
    assert sum(t is None for t in texts.values()) == 2
    listed = (tmp_path / "run" / LEFT_OUT_FILE).read_text().splitlines()[1:]
    rows = {r.split("\t")[0]: r.split("\t")[1:] for r in listed}
    assert rows == {
        loop_id: ["repetitive", "", LOOP.strip(), ""],
        long_id: ["too_long", "", record["texts"][long_id], ""],
    }
