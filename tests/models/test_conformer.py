"""Conformer-CTC: subsampling arithmetic, padding invariance, hidden states, presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from asrkd.models import PRESETS, build_model
from asrkd.models.conformer import (
    ConformerCTC,
    ConformerDims,
    Dropout,
    Subsampling,
    attention_bias,
    attention_with_dropout,
    depthwise,
    pointwise,
    subsampled_lengths,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dataclasses.replace(PRESETS["tiny"], vocab_size=29, n_mels=80, dropout=0.1)


def tiny_model(seed: int = 0, **changes) -> ConformerCTC:
    torch.manual_seed(seed)
    return ConformerCTC(dataclasses.replace(TINY, **changes)).eval()


def test_subsampling_output_frames_equal_subsampled_lengths_for_every_length() -> None:
    torch.manual_seed(0)
    sub = Subsampling(n_mels=80, channels=4, d_model=8)
    for n in range(7, 401):
        out = sub(torch.randn(1, n, 80))
        assert out.shape == (1, int(subsampled_lengths(torch.tensor([n]))), 8), n
    # The formula itself, checked against the conv arithmetic floor((T - 3) / 2) + 1 twice.
    for n in range(7, 401):
        once = (n - 3) // 2 + 1
        assert int(subsampled_lengths(torch.tensor([n]))) == (once - 3) // 2 + 1


@pytest.mark.parametrize("n_frames", [7, 8, 9, 10, 11, 33, 64, 101, 255, 400])
def test_model_output_lengths_and_shapes(n_frames: int) -> None:
    model = tiny_model()
    with torch.no_grad():
        out = model(torch.randn(1, n_frames, 80), torch.tensor([n_frames]))
    n_out = int(subsampled_lengths(torch.tensor([n_frames])))
    assert n_out >= 1
    assert out.logits.shape == (1, n_out, TINY.vocab_size)
    assert out.lengths.tolist() == [n_out]


def test_batched_lengths_use_each_utterance_own_frames() -> None:
    lens = torch.tensor([400, 7, 123, 56, 9])
    with torch.no_grad():
        out = tiny_model()(torch.randn(5, 400, 80), lens)
    assert out.lengths.tolist() == subsampled_lengths(lens).tolist()
    assert out.logits.shape[1] == int(out.lengths.max())


def test_logits_do_not_depend_on_padding_or_batch_mates() -> None:
    model = tiny_model()
    torch.manual_seed(1)
    short, long_ = torch.randn(1, 57, 80), torch.randn(1, 203, 80)
    with torch.no_grad():
        alone = model(short, torch.tensor([57]))
        batch = torch.zeros(2, 203, 80)
        batch[0, :57], batch[1] = short[0], long_[0]
        batch[0, 57:] = 1e3 * torch.randn(146, 80)  # garbage in the padding must not matter
        padded = model(batch, torch.tensor([57, 203]))
    n = int(alone.lengths[0])
    assert int(padded.lengths[0]) == n
    torch.testing.assert_close(padded.logits[0, :n], alone.logits[0], atol=1e-5, rtol=1e-5)
    for h_pad, h_alone in zip(padded.hidden_states, alone.hidden_states):
        torch.testing.assert_close(h_pad[0, :n], h_alone[0], atol=1e-5, rtol=1e-5)


def test_hidden_states_one_per_block_with_model_width() -> None:
    model = tiny_model(n_layers=3)
    with torch.no_grad():
        out = model(torch.randn(2, 90, 80), torch.tensor([90, 60]))
    assert len(out.hidden_states) == 3
    for h in out.hidden_states:
        assert h.shape == (2, out.logits.shape[1], TINY.d_model)
    # The last hidden state is what the CTC head reads.
    torch.testing.assert_close(model.ctc_head(out.hidden_states[-1]), out.logits)


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout() -> None:
    model = tiny_model(dropout=0.3)
    feats, lens = torch.randn(1, 80, 80), torch.tensor([80])
    with torch.no_grad():
        assert torch.equal(model(feats, lens).logits, model(feats, lens).logits)
        model.train()
        assert not torch.equal(model(feats, lens).logits, model(feats, lens).logits)


def test_dims_reject_uneven_heads_and_even_kernels() -> None:
    with pytest.raises(ValueError, match="head size"):
        ConformerDims(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="head size"):
        ConformerDims(d_model=12, n_heads=4)  # head size 3 is odd: rotary needs pairs
    with pytest.raises(ValueError, match="odd"):
        ConformerDims(conv_kernel=8)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_and_runs(preset: str) -> None:
    model = build_model(preset, vocab_size=29, n_mels=80, dropout=0.0).eval()
    assert model.dims.vocab_size == 29 and model.dims.n_layers == PRESETS[preset].n_layers
    with torch.no_grad():
        out = model(torch.randn(1, 40, 80), torch.tensor([40]))
    assert out.logits.shape == (1, int(model.output_lengths(torch.tensor(40))), 29)
    assert out.logits.shape[1] == (9 if model.family == "conformer" else 20)
    assert torch.isfinite(out.logits).all()


def test_librispeech_presets_follow_the_size_rules() -> None:
    n = {
        name: build_model(name, vocab_size=29, n_mels=80, dropout=0.1).n_params()
        for name in ("conformer-m", "conformer-m-40", "conformer-m-15")
    }
    assert 20e6 <= n["conformer-m"] <= 35e6  # the ~30 M class of Conformer-M (it is ~26 M)
    assert n["conformer-m-40"] <= 0.40 * n["conformer-m"]
    assert n["conformer-m-15"] <= 0.15 * n["conformer-m"]
    assert n["conformer-m-15"] < n["conformer-m-40"]


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_fast_dropout_drops_p_and_keeps_the_mean(p: float) -> None:
    """Dropout's 8-bit masks against the definition: a share p' = round(256 p) / 256 of elements
    dropped (to within sampling error over 10^6 draws), the rest scaled by 1/(1-p'), the
    gradient the same mask."""
    torch.manual_seed(0)
    drop = Dropout(p).train()
    p_used = round(256 * p) / 256
    assert abs(p_used - p) <= 1 / 512
    x = torch.ones(1000, 1000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p_used)) < 5 * (p * (1 - p) / 1e6) ** 0.5
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p_used)), rtol=1e-6)
    assert abs(y.mean().item() - 1.0) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * mask)/dx = mask
    # the eight 8-bit draws of each 64-bit word are independent: no stripes in the mask
    by_lane = kept.flatten()[: 8 * 125_000].view(-1, 8).float().mean(0)
    assert (by_lane - (1 - p_used)).abs().max() < 0.01
    # a seed gives the same mask (runs stay reproducible); eval mode and p=0 are the identity
    torch.manual_seed(0)
    assert torch.equal(drop(torch.ones(1000, 1000)), y.detach())
    z = torch.randn(3, 5)
    assert drop.eval()(z) is z and Dropout(0.0).train()(z) is z
    with pytest.raises(ValueError):
        Dropout(1.0)
    with pytest.raises(ValueError):
        Dropout(0.999)  # rounds to 1


def test_pointwise_matches_the_kernel_one_convolution() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(12, 24, 1)
    x = torch.randn(3, 17, 12)
    reference = conv(x.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(pointwise(conv, x), reference, atol=1e-6)


@pytest.mark.parametrize("n_frames", [1, 7, 49])
def test_depthwise_matches_the_grouped_convolution(n_frames: int) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(12, 12, 15, padding=7, groups=12)
    x = torch.randn(3, n_frames, 12, requires_grad=True)
    reference = conv(x.transpose(1, 2)).transpose(1, 2)
    y = depthwise(conv, x)
    assert y.shape == reference.shape and torch.allclose(y, reference, atol=1e-6)
    (grad_ref,) = torch.autograd.grad(reference.square().sum(), x)
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    assert torch.allclose(grad, grad_ref, atol=1e-5)


def test_attention_with_dropout_is_sdpa_with_its_weights_dropped() -> None:
    """Without dropping it equals F.scaled_dot_product_attention under the same key mask; with
    p it equals the dropped, rescaled weights times v, and masked keys get no weight."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8) for _ in range(3))
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
    mask = attention_bias(valid, q.dtype)
    # the additive mask gives what the boolean one does, to the bit
    assert torch.equal(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), reference)
    assert torch.allclose(
        attention_with_dropout(q, k, v, mask, Dropout(0.3).eval()), reference, atol=1e-5
    )

    class Recorder(Dropout):
        def forward(self, x):
            self.seen = x
            self.out = super().forward(x)
            return self.out

    drop = Recorder(0.3).train()
    y = attention_with_dropout(q, k, v, mask, drop)
    assert torch.allclose(drop.seen.sum(-1), torch.ones(2, 3, 9), atol=1e-5)  # softmax rows
    assert (drop.seen[1, ..., 6:] == 0).all()  # padded keys never attended
    assert 0 < (drop.out == 0).float().mean() < 0.6  # some weights dropped
    assert torch.allclose(y, drop.out @ v, atol=1e-6)
