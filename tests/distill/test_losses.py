"""KD and CTC losses: zero at equality, gradients to the student only, padding ignored, golden
values worked out by hand, top-k teachers, shape errors, per-frame normalisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from asrkd.data.dataset import Batch
from asrkd.data.text import Tokenizer
from asrkd.distill.losses import align_time, ctc_loss, frame_kl, hidden_distance
from asrkd.distill.strategies import SequenceKD
from asrkd.distill.teachers import TeacherOutput
from asrkd.models.conformer import ModelOutput

pytestmark = pytest.mark.usefixtures("one_thread")

LENS = torch.tensor([6, 3])  # second utterance: 3 padded frames


def frame_kl_t2(s: torch.Tensor, t: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    return frame_kl(s, t, lens, temperature=2.0)


def hidden(s: torch.Tensor, t: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    return hidden_distance(s, t, lens)


FRAME_LOSSES = {
    "frame_kl": lambda s, t, lens: frame_kl(s, t, lens, temperature=1.0),
    "frame_kl_t2": frame_kl_t2,
    "hidden_distance": hidden,
}


@pytest.fixture(params=sorted(FRAME_LOSSES))
def loss_fn(request):
    return FRAME_LOSSES[request.param]


def pair(seed: int = 0, shape=(2, 6, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_zero_when_student_equals_teacher_positive_otherwise(loss_fn) -> None:
    s, t = pair()
    assert loss_fn(t.clone(), t, LENS).item() == pytest.approx(0.0, abs=1e-6)
    assert loss_fn(s, t, LENS).item() > 1e-3


def test_gradients_reach_the_student_only(loss_fn) -> None:
    s, t = pair()
    s.requires_grad_(True)
    t_before = t.clone()
    loss_fn(s, t, LENS).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None and not t.requires_grad
    assert torch.equal(t, t_before)


def test_teacher_made_under_inference_mode_works(loss_fn) -> None:
    s, t = pair()
    s.requires_grad_(True)
    with torch.inference_mode():
        t_inf = t * 1.0
    loss = loss_fn(s, t_inf, LENS)
    loss.backward()
    assert torch.isfinite(loss) and s.grad.abs().sum() > 0


def test_padded_frames_change_nothing(loss_fn) -> None:
    s, t = pair()
    s.requires_grad_(True)
    loss = loss_fn(s, t, LENS)
    loss.backward()
    s2, t2 = s.detach().clone(), t.clone()
    s2[1, 3:] = 100 * torch.randn(3, 5)
    t2[1, 3:] = -100 * torch.randn(3, 5)
    assert loss_fn(s2, t2, LENS).item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.all(s.grad[1, 3:] == 0)


def test_frame_kl_golden_value() -> None:
    # Frame 0: teacher p = (1/3, 1/3, 1/3), student q = (1/2, 1/4, 1/4):
    #   KL(p || q) = sum p log(p / q) = -ln 3 - (1/3)(ln 1/2 + 2 ln 1/4) = (5/3) ln 2 - ln 3
    #              = 1.155245 - 1.098612 = 0.056633
    # Frame 1: teacher == student -> 0. Frame 2 is padding (garbage, ignored).
    # Per valid frame: (0.056633 + 0) / 2 = 0.028317.
    p = torch.tensor([1 / 3, 1 / 3, 1 / 3]).log()
    q = torch.tensor([1 / 2, 1 / 4, 1 / 4]).log()
    other = torch.tensor([0.2, 0.3, 0.5]).log()
    student = torch.stack([q, other, torch.tensor([9.0, -9.0, 0.0])])[None]
    teacher = torch.stack([p, other, torch.tensor([-9.0, 9.0, 0.0])])[None]
    expected = (5 / 3 * math.log(2) - math.log(3)) / 2
    assert expected == pytest.approx(0.028317, abs=1e-6)
    got = frame_kl(student, teacher, torch.tensor([2]), temperature=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # Temperature 2 on logits 2 * log p gives the same distributions, scaled by T^2 = 4.
    got_t2 = frame_kl(2 * student, 2 * teacher, torch.tensor([2]), temperature=2.0)
    assert got_t2.item() == pytest.approx(4 * expected, rel=1e-5)


def test_hidden_distance_golden_value() -> None:
    # Frame 0: s = (1, 0), t = (0, 1): L1 mean = (1 + 1) / 2 = 1, cos = 0 -> 1 + (1 - 0) = 2.
    # Frame 1: s = (1, 1), t = (2, 2): L1 mean = 1, cos = 1 -> 1 + 0 = 1. Frame 2 is padding.
    # Per valid frame: (2 + 1) / 2 = 1.5.
    s = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, -5.0]]])
    t = torch.tensor([[[0.0, 1.0], [2.0, 2.0], [-7.0, 3.0]]])
    assert hidden_distance(s, t, torch.tensor([2])).item() == pytest.approx(1.5, rel=1e-6)


def test_frame_kl_normalises_over_all_valid_frames_of_the_batch() -> None:
    s, t = pair(3)
    per_utt = [
        frame_kl(s[i : i + 1, :n], t[i : i + 1, :n], LENS[i : i + 1], 1.0)
        for i, n in enumerate(LENS.tolist())
    ]
    expected = sum(v * n for v, n in zip(per_utt, LENS.tolist())) / LENS.sum()
    assert frame_kl(s, t, LENS, 1.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_top_k_teacher_gives_finite_loss_and_gradients() -> None:
    s, t = pair(1)
    s.requires_grad_(True)
    top = t.topk(2, dim=-1)
    sparse = torch.full_like(t, float("-inf")).scatter(-1, top.indices, top.values)
    loss = frame_kl(s, sparse, LENS, temperature=2.0)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # Equal to the KL against the teacher renormalised over its top 2 (here T = 2, times 4).
    p = (sparse / 2).softmax(-1)
    logq = (s.detach() / 2).log_softmax(-1)
    logp = torch.where(p > 0, p.log(), torch.zeros_like(p))
    terms = (p * (logp - logq)).sum(-1)
    mask = torch.arange(6)[None] < LENS[:, None]
    expected = 4 * (terms * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("t_shape", [(2, 4, 5), (2, 6, 7)])
def test_frame_kl_refuses_other_frame_rates_or_vocabularies(t_shape) -> None:
    s = torch.randn(2, 6, 5)
    with pytest.raises(ValueError, match="frame rates or vocabularies"):
        frame_kl(s, torch.randn(t_shape), LENS, 1.0)


def test_hidden_distance_refuses_unaligned_states() -> None:
    with pytest.raises(ValueError, match="project and align"):
        hidden_distance(torch.randn(2, 6, 4), torch.randn(2, 6, 8), LENS)


def test_align_time() -> None:
    x = torch.randn(2, 6, 3)
    assert align_time(x, 6) is x
    ramp = torch.arange(8.0).view(1, 8, 1).expand(1, 8, 2)
    y = align_time(ramp, 4)
    assert y.shape == (1, 4, 2)
    # Halving a linear ramp by linear interpolation (half-pixel centres) averages pairs.
    torch.testing.assert_close(y[0, :, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))
    assert align_time(torch.randn(1, 3, 5), 9).shape == (1, 9, 5)


# -- CTC on the ground truth -------------------------------------------------------------------


def ctc_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 12, 6, generator=g)
    lengths = torch.tensor([12, 7, 9])
    targets = torch.tensor([[1, 2, 3, 2], [4, 4, 0, 0], [5, 1, 2, 0]])
    target_lens = torch.tensor([4, 2, 3])
    return logits, lengths, targets, target_lens


def test_ctc_loss_is_per_valid_frame() -> None:
    logits, lengths, targets, target_lens = ctc_inputs()
    log_probs = logits.log_softmax(-1).transpose(0, 1)
    total = F.ctc_loss(log_probs, targets, lengths, target_lens, reduction="sum")
    got = ctc_loss(logits, lengths, targets, target_lens)
    assert got.item() == pytest.approx(total.item() / 28, rel=1e-5)  # 12 + 7 + 9 frames


def test_ctc_loss_ignores_padding() -> None:
    logits, lengths, targets, target_lens = ctc_inputs()
    logits.requires_grad_(True)
    loss = ctc_loss(logits, lengths, targets, target_lens)
    loss.backward()
    logits2, targets2 = logits.detach().clone(), targets.clone()
    logits2[1, 7:] = 50 * torch.randn(5, 6)
    targets2[1, 2:] = 3
    assert ctc_loss(logits2, lengths, targets2, target_lens).item() == pytest.approx(loss.item())
    assert torch.all(logits.grad[1, 7:] == 0)


def test_unlabelled_utterances_contribute_nothing() -> None:
    logits, lengths, targets, target_lens = ctc_inputs()
    logits.requires_grad_(True)
    mask = torch.tensor([True, False, True])
    loss = ctc_loss(logits, lengths, targets, target_lens, utt_mask=mask)
    loss.backward()
    keep = [0, 2]
    only = ctc_loss(logits.detach()[keep], lengths[keep], targets[keep], target_lens[keep])
    assert loss.item() == pytest.approx(only.item(), rel=1e-6)  # divided by 12 + 9 frames
    assert torch.all(logits.grad[1] == 0) and logits.grad[0].abs().sum() > 0


def test_no_labelled_utterance_gives_zero_with_a_graph() -> None:
    logits, lengths, targets, target_lens = ctc_inputs()
    logits.requires_grad_(True)
    loss = ctc_loss(logits, lengths, targets, target_lens, utt_mask=torch.zeros(3, dtype=bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(logits.grad == 0)


# -- sequence-level KD (CTC on the teacher's transcripts) -------------------------------------

TOK = Tokenizer()


def peaked(paths: list[list[int]], t_max: int, scale: float = 30.0) -> torch.Tensor:
    logits = torch.zeros(len(paths), t_max, TOK.vocab_size)
    for b, path in enumerate(paths):
        for t, tok in enumerate(path):
            logits[b, t, tok] = scale
    return logits


def seq_batch(n: int) -> Batch:
    return Batch(
        torch.zeros(n, 1, 1),
        torch.ones(n, dtype=torch.long),
        torch.zeros(n, 1, dtype=torch.long),
        torch.zeros(n, dtype=torch.long),
        torch.zeros(n, dtype=bool),
        [f"c{i}" for i in range(n)],
        [1.0] * n,
    )


def sequence_loss(student_logits: torch.Tensor, lengths: torch.Tensor, texts: list[str]):
    student = ModelOutput(student_logits, lengths, ())
    teacher = TeacherOutput(lengths=lengths, transcripts=texts)
    return SequenceKD(TOK)(student, teacher, seq_batch(len(texts)))["kd_seq"]


def test_sequence_kd_near_zero_when_student_says_the_teacher_transcript() -> None:
    a, b, space = (TOK.symbols.index(c) for c in "ab ")
    # "ab a" on 8 frames and "" (silence) on 4 frames, then padding.
    logits = peaked([[0, a, b, 0, space, a, 0, 0], [0, 0, 0, 0]], t_max=8)
    lens = torch.tensor([8, 4])
    assert sequence_loss(logits, lens, ["ab a", ""]).item() < 1e-6
    assert sequence_loss(logits, lens, ["ba a", ""]).item() > 1.0
    assert sequence_loss(logits, lens, ["ab a", "a"]).item() > 1.0


def test_sequence_kd_gradients_and_padding() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 10, TOK.vocab_size, generator=g, requires_grad=True)
    lens = torch.tensor([10, 6])
    loss = sequence_loss(logits, lens, ["cab", "ok"])
    loss.backward()
    assert loss > 0 and logits.grad[0].abs().sum() > 0
    assert torch.all(logits.grad[1, 6:] == 0)
    changed = logits.detach().clone()
    changed[1, 6:] = 40.0
    assert sequence_loss(changed, lens, ["cab", "ok"]).item() == pytest.approx(loss.item())
