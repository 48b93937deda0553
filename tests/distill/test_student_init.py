"""Student initialisation from evenly spaced teacher layers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from asrkd.distill.student_init import evenly_spaced, init_from_teacher
from asrkd.models import PRESETS
from asrkd.models.conformer import ConformerCTC

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = dataclasses.replace(PRESETS["tiny"], vocab_size=29, n_mels=20, dropout=0.0)


def model(seed: int, **changes) -> ConformerCTC:
    torch.manual_seed(seed)
    return ConformerCTC(dataclasses.replace(BASE, **changes))


@pytest.mark.parametrize(
    ("n_student", "n_teacher", "expected"),
    [
        (4, 16, [0, 5, 10, 15]),
        (2, 16, [0, 15]),
        (3, 5, [0, 2, 4]),
        (1, 6, [5]),
        (4, 4, [0, 1, 2, 3]),
        (10, 16, [0, 2, 3, 5, 7, 8, 10, 12, 13, 15]),
    ],
)
def test_evenly_spaced(n_student: int, n_teacher: int, expected: list[int]) -> None:
    assert evenly_spaced(n_student, n_teacher) == expected


def test_evenly_spaced_keeps_ends_in_order_and_in_range() -> None:
    for n_t in range(1, 20):
        for n_s in range(1, n_t + 1):
            got = evenly_spaced(n_s, n_t)
            assert len(got) == n_s and got[-1] == n_t - 1
            assert got == sorted(set(got)) and 0 <= got[0]
            if n_s > 1:
                assert got[0] == 0


def test_copies_the_layers_it_claims() -> None:
    teacher, student = model(1, n_layers=6), model(2, n_layers=3)
    report = init_from_teacher(student, teacher)
    assert report.layer_map == {0: 0, 1: 2, 2: 5}  # round(2.5) == 2
    assert report.skipped == [] and len(report.copied) == len(student.state_dict())
    for s_block, t_block in report.layer_map.items():
        s_state = student.blocks[s_block].state_dict()
        t_state = teacher.blocks[t_block].state_dict()
        assert s_state.keys() == t_state.keys()
        for key in s_state:
            assert torch.equal(s_state[key], t_state[key]), (s_block, key)
    for name in ("subsampling", "ctc_head"):
        for key, value in getattr(student, name).state_dict().items():
            assert torch.equal(value, getattr(teacher, name).state_dict()[key])
    # Copies, not shared storage: training the student leaves the teacher alone.
    with torch.no_grad():
        student.ctc_head.weight.add_(1.0)
    assert not torch.equal(student.ctc_head.weight, teacher.ctc_head.weight)


def test_tensors_of_other_shapes_are_skipped_and_left_alone() -> None:
    teacher, student = model(1, n_layers=4), model(2, n_layers=2, ff_mult=4)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = init_from_teacher(student, teacher)
    assert report.skipped and all(
        ".ff1.net.1." in k
        or ".ff1.net.4.weight" in k
        or ".ff2.net.1." in k
        or ".ff2.net.4.weight" in k
        for k in report.skipped
    )
    state = student.state_dict()
    for key in report.skipped:
        assert torch.equal(state[key], before[key])
    t_state = teacher.state_dict()
    assert torch.equal(state["blocks.1.attn.qkv.weight"], t_state["blocks.3.attn.qkv.weight"])


def test_error_when_no_tensor_fits() -> None:
    teacher, student = model(1), model(2, d_model=16, vocab_size=11)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ValueError, match="no teacher tensor fits"):
        init_from_teacher(student, teacher)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_smoke_run_catches_a_broken_teacher_and_keeps_the_mode() -> None:
    teacher, student = model(1, n_layers=4), model(2, n_layers=2)
    student.train()
    init_from_teacher(student, teacher)
    assert student.training
    with torch.no_grad():
        teacher.ctc_head.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        init_from_teacher(model(3, n_layers=2), teacher)
