"""Preference losses against the published formulas, written out here separately in plain
Python floats (math), with their hand-derived gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.finetune.preference import PreferenceLoss, preference_loss, sequence_logprobs


def _log_sigmoid(x: float) -> float:
    """log(1 / (1 + e^-x)), stable for large |x|."""
    return -(max(-x, 0.0) + math.log1p(math.exp(-abs(x))))


def _sigmoid(x: float) -> float:
    return math.exp(_log_sigmoid(x))


def _expected(rows, beta, loss_type, eps):
    """(loss, gradient per row of (d/dpolicy_chosen, d/dpolicy_rejected), metrics) by hand.

    rows: [(policy_chosen, policy_rejected, ref_chosen, ref_rejected)]. The loss is the batch
    mean, so each row's gradient carries 1/B.
    """
    n = len(rows)
    losses, grads = [], []
    for pc, pr, rc, rr in rows:
        h = (pc - pr) - (rc - rr)
        if loss_type == "sigmoid":
            losses.append(-(1 - eps) * _log_sigmoid(beta * h) - eps * _log_sigmoid(-beta * h))
            dh = -(1 - eps) * beta * _sigmoid(-beta * h) + eps * beta * _sigmoid(beta * h)
        else:
            losses.append((h - 1 / (2 * beta)) ** 2)
            dh = 2 * (h - 1 / (2 * beta))
        grads.append((dh / n, -dh / n))
    chosen = [beta * (pc - rc) for pc, _, rc, _ in rows]
    rejected = [beta * (pr - rr) for _, pr, _, rr in rows]
    metrics = {
        "rewards/chosen": sum(chosen) / n,
        "rewards/rejected": sum(rejected) / n,
        "rewards/margins": sum(c - r for c, r in zip(chosen, rejected)) / n,
        "rewards/accuracies": sum(c > r for c, r in zip(chosen, rejected)) / n,
        "logps/chosen": sum(r[0] for r in rows) / n,
        "logps/rejected": sum(r[1] for r in rows) / n,
    }
    return sum(losses) / n, grads, metrics


def _check(rows, beta, loss_type, eps=0.0):
    cols = [torch.tensor(col, dtype=torch.float64, requires_grad=True) for col in zip(*rows)]
    cfg = PreferenceLoss(beta=beta, loss_type=loss_type, label_smoothing=eps)
    loss, metrics = preference_loss(*cols, cfg)
    loss.backward()
    want_loss, want_grads, want_metrics = _expected(rows, beta, loss_type, eps)
    assert loss.item() == pytest.approx(want_loss, rel=1e-9, abs=1e-12)
    assert cols[0].grad.tolist() == pytest.approx([g[0] for g in want_grads], rel=1e-9, abs=1e-12)
    assert cols[1].grad.tolist() == pytest.approx([g[1] for g in want_grads], rel=1e-9, abs=1e-12)
    # The reference model is frozen: no gradient flows into its log-probabilities.
    assert cols[2].grad is None and cols[3].grad is None
    assert metrics.keys() == want_metrics.keys()
    for name, value in want_metrics.items():
        assert metrics[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


# (policy_chosen, policy_rejected, ref_chosen, ref_rejected): sequence log-probs.
HAND_PICKED = [
    (-12.0, -15.0, -13.0, -14.0),  # policy prefers chosen more than the reference does
    (-20.5, -18.0, -19.0, -19.5),  # policy prefers the rejected reply
    (-3.0, -3.0, -3.0, -3.0),  # h = 0
    (-150.0, -400.0, -200.0, -210.0),  # large margin: log sigmoid saturates
]


@pytest.mark.parametrize(
    ("beta", "loss_type", "eps"),
    [
        (0.1, "sigmoid", 0.0),
        (0.5, "sigmoid", 0.0),
        (0.1, "sigmoid", 0.2),
        (0.1, "ipo", 0.0),
        (2.0, "ipo", 0.0),
    ],
)
def test_hand_picked(beta, loss_type, eps):
    _check(HAND_PICKED, beta, loss_type, eps)
    for row in HAND_PICKED:
        _check([row], beta, loss_type, eps)


def test_known_values():
    zero = torch.zeros(2, dtype=torch.float64)
    loss, metrics = preference_loss(zero, zero, zero, zero, PreferenceLoss(beta=1.0))
    assert loss.item() == pytest.approx(math.log(2))  # h = 0: sigmoid(0) = 1/2
    assert metrics["rewards/accuracies"] == 0.0  # a tie is not a win
    loss, _ = preference_loss(zero, zero, zero, zero, PreferenceLoss(beta=0.5, loss_type="ipo"))
    assert loss.item() == pytest.approx(1.0)  # (0 - 1/(2 * 0.5))^2
    # cDPO with eps > 0 is minimal at a finite margin: at h -> inf its loss grows again.
    big = torch.tensor([1000.0], dtype=torch.float64)
    cdpo = PreferenceLoss(beta=1.0, label_smoothing=0.1)
    loss, _ = preference_loss(big, -big, big * 0, big * 0, cdpo)
    assert loss.item() == pytest.approx(0.1 * 2000, rel=1e-6)


logp = st.floats(-300.0, 0.0, allow_nan=False)
row = st.tuples(logp, logp, logp, logp)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(row, min_size=1, max_size=6),
    beta=st.floats(0.01, 2.0),
    loss_type=st.sampled_from(["sigmoid", "ipo"]),
    eps=st.floats(0.0, 0.49),
)
def test_generated(rows, beta, loss_type, eps):
    _check(rows, beta, loss_type, eps if loss_type == "sigmoid" else 0.0)


def test_metrics_follow_policy_not_reference():
    pc, pr = torch.tensor([-1.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    _, metrics = preference_loss(pc, pr, rc, rr, PreferenceLoss(beta=0.5))
    assert metrics["rewards/accuracies"] == 0.5
    assert metrics["rewards/chosen"] == pytest.approx(0.5 * ((1.0 + -3.0) / 2))
    assert metrics["logps/rejected"] == pytest.approx(-3.0)


def _loop_logprobs(logits, labels, mask, average):
    out = []
    for b in range(logits.shape[0]):
        total, count = 0.0, 0
        for t in range(logits.shape[1]):
            if mask[b][t]:
                row = [float(x) for x in logits[b, t]]
                total += row[labels[b][t]] - math.log(sum(math.exp(x) for x in row))
                count += 1
        out.append(total / max(count, 1) if average else total)
    return out


def _flat(logits, labels, mask):
    """What the model gives with loss_only: model labels [B, T + 1] (-100 where masked, a
    leading id that is never a target) and the logits rows of the masked-in positions."""
    model_labels = torch.cat([torch.zeros_like(labels[:, :1]), labels.masked_fill(~mask, -100)], 1)
    return logits[mask], model_labels


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logprobs_matches_loop(average):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, 7, (3, 5), generator=gen)
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    got = sequence_logprobs(*_flat(logits, labels, mask), average=average)
    assert got.tolist() == pytest.approx(_loop_logprobs(logits, labels, mask, average))
    assert got[2].item() == 0.0  # nothing masked in: an empty sum


def test_sequence_logprobs_gradient_reaches_logits():
    logits = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 2, 3], [0, 0, 1]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    sequence_logprobs(*_flat(logits, labels, mask)).sum().backward()
    # d log softmax(x)_y / dx = onehot(y) - softmax(x) where masked in, zero elsewhere.
    want = torch.nn.functional.one_hot(labels, 4) - logits.detach().softmax(-1)
    assert torch.allclose(logits.grad, want * mask[..., None])


def test_sequence_logprobs_low_precision_logits_are_upcast():
    logits = torch.randn(1, 4, 50).bfloat16()
    labels, mask = torch.tensor([[1, 2, 3, 4]]), torch.ones(1, 4, dtype=torch.bool)
    got = sequence_logprobs(*_flat(logits, labels, mask))
    assert got.dtype == torch.float32
    want = sequence_logprobs(*_flat(logits.float(), labels, mask))
    assert got.item() == pytest.approx(want.item())


def test_sequence_logprobs_of_the_model_equal_a_full_forward():
    """The loss_only logits of a real model give the log-probabilities of full logits."""
    from ismail_core.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=40, max_seq_len=16, dim=32, n_layers=2, n_heads=2))
    ids = torch.randint(0, 40, (3, 9))
    labels = ids.clone()
    labels[:, :4] = -100
    labels[2, :7] = -100
    out = model(ids, labels=labels, loss_only=True)
    got = sequence_logprobs(out.logits, labels)
    full = torch.log_softmax(model(ids).float(), -1)[:, :-1]
    target = labels[:, 1:]
    want = (full.gather(-1, target.clamp(min=0)[..., None])[..., 0] * (target != -100)).sum(-1)
    assert torch.allclose(got, want, atol=1e-5)


def test_sequence_logprobs_shape_error():
    with pytest.raises(ValueError, match=r"must be \[N, V\].*loss_only=True"):
        sequence_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"N = 6"):  # full logits: one row per position
        sequence_logprobs(torch.zeros(8, 4), torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"beta": -1.0}, "beta must be > 0"),
        ({"beta": float("nan")}, "beta must be > 0"),
        ({"loss_type": "hinge"}, "unknown preference loss_type 'hinge'"),
        ({"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
        ({"label_smoothing": -0.1}, r"label_smoothing must be in \[0, 0.5\)"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "applies to loss_type 'sigmoid' only"),
        ({"rpo_alpha": -1.0}, "rpo_alpha must be >= 0"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PreferenceLoss(**kwargs)


def test_rpo_adds_the_weighted_chosen_nll():
    rows = [(-2.0, -9.0, -2.5, -7.0), (-4.0, -3.0, -4.2, -3.5)]
    cols = [torch.tensor(col, dtype=torch.float64, requires_grad=True) for col in zip(*rows)]
    nll = torch.tensor(0.75, dtype=torch.float64, requires_grad=True)
    cfg = PreferenceLoss(beta=0.2, rpo_alpha=0.5)
    loss, metrics = preference_loss(*cols, cfg, chosen_nll=nll)
    want_loss, want_grads, _ = _expected(rows, 0.2, "sigmoid", 0.0)
    assert loss.item() == pytest.approx(want_loss + 0.5 * 0.75, rel=1e-9)
    assert metrics["nll_loss"] == pytest.approx(0.75)
    loss.backward()
    assert nll.grad.item() == pytest.approx(0.5)
    assert cols[0].grad.tolist() == pytest.approx([g[0] for g in want_grads], rel=1e-9)
    with pytest.raises(ValueError, match="needs chosen_nll"):
        preference_loss(*[c.detach() for c in cols], cfg)
