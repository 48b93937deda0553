"""Loss functions: pure tensor functions with explicit masking and reduction.

Normalisation: every loss here is a sum over valid output frames (or utterances, for CTC)
divided by the number of valid output frames that contributed, so CTC and frame-level KD terms
are on the same per-frame scale and variable-length batches average correctly.

Dimension legend: B batch, T' output frames, V vocabulary, D hidden width, S target tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def frame_mask(lengths: Tensor, n_frames: int) -> Tensor:
    """(B, T') bool, True on valid frames."""
    return torch.arange(n_frames, device=lengths.device)[None, :] < lengths[:, None]


def ctc_loss(
    logits: Tensor,
    lengths: Tensor,
    targets: Tensor,
    target_lens: Tensor,
    utt_mask: Tensor | None = None,
    blank: int = 0,
) -> Tensor:
    """CTC negative log-likelihood per valid frame.

    logits (B, T', V), lengths (B,), targets (B, S) padded with anything, target_lens (B,),
    utt_mask (B,) bool selects the utterances that count (e.g. those with a transcript).
    Returns sum over selected utterances of -log p(y|x), divided by their total valid frames;
    0 (with a graph) when no utterance is selected. Impossible alignments count as 0 (zero_infinity)
    and are reported by the caller's data checks rather than here.
    """
    if utt_mask is None:
        utt_mask = torch.ones_like(lengths, dtype=torch.bool)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T', B, V)
    per_utt = F.ctc_loss(
        log_probs,
        targets,
        lengths,
        target_lens,
        blank=blank,
        reduction="none",
        zero_infinity=True,
    )
    per_utt = per_utt * utt_mask.to(per_utt.dtype)
    n_frames = (lengths * utt_mask).sum().clamp(min=1)
    return per_utt.sum() / n_frames


def frame_kl(
    student_logits: Tensor, teacher_logits: Tensor, lengths: Tensor, temperature: float
) -> Tensor:
    """KL(teacher_T || student_T) * T^2 per valid frame.

    student_logits, teacher_logits (B, T', V); lengths (B,). Teacher entries of -inf (a top-k
    cache) have probability 0 and contribute nothing. Padding frames are masked out.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: frame rates or vocabularies do not match"
        )
    t = temperature
    student_logp = (student_logits.float() / t).log_softmax(-1)
    teacher_logp = (teacher_logits.float() / t).log_softmax(-1)
    teacher_p = teacher_logp.exp()
    terms = torch.where(teacher_p > 0, teacher_p * (teacher_logp - student_logp), 0.0)
    per_frame = terms.sum(-1)  # (B, T')
    mask = frame_mask(lengths, student_logits.shape[1])
    return (per_frame * mask).sum() / mask.sum().clamp(min=1) * (t * t)


def align_time(x: Tensor, n_frames: int) -> Tensor:
    """Resample (B, T, D) along time to (B, n_frames, D) by linear interpolation."""
    if x.shape[1] == n_frames:
        return x
    y = F.interpolate(x.transpose(1, 2), size=n_frames, mode="linear", align_corners=False)
    return y.transpose(1, 2)


def hidden_distance(student_hidden: Tensor, teacher_hidden: Tensor, lengths: Tensor) -> Tensor:
    """L1 distance + (1 - cosine similarity) per valid frame.

    student_hidden (B, T', D) already projected to the teacher's width, teacher_hidden (B, T', D),
    lengths (B,). The L1 term is averaged over the D channels so it does not grow with width.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"hidden states {tuple(student_hidden.shape)} and {tuple(teacher_hidden.shape)} "
            "differ: project and align them first"
        )
    s, t = student_hidden.float(), teacher_hidden.float()
    l1 = (s - t).abs().mean(-1)
    cos = F.cosine_similarity(s, t, dim=-1, eps=1e-6)
    mask = frame_mask(lengths, s.shape[1])
    return ((l1 + 1.0 - cos) * mask).sum() / mask.sum().clamp(min=1)
