"""Preference tuning losses: DPO (sigmoid), conservative DPO (label smoothing) and IPO.

The inputs are sequence log-probabilities of the chosen and rejected replies under the policy
being trained and under a frozen reference model (see `sequence_logprobs`). With

    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)

the losses are, averaged over the batch (Rafailov et al. 2023; Mitchell 2023; Azar et al. 2023):

    sigmoid / cDPO:  -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
    ipo:             (h - 1 / (2 * beta)) ** 2

The metrics carry the names TRL's DPOTrainer logs, so runs compare across the two tools.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ismail_core.finetune.data import IGNORE

LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo")


@dataclass(frozen=True)
class PreferenceLoss:
    """Options of the preference loss.

    beta: strength of the pull towards the reference (the KL penalty's inverse temperature in
    DPO; IPO's target margin is 1 / (2 * beta)).
    loss_type: "sigmoid" (DPO, or cDPO with label_smoothing) or "ipo".
    label_smoothing: cDPO's eps, the assumed probability that a pair's preference is flipped;
    in [0, 0.5), since at 0.5 the loss no longer prefers either reply.
    rpo_alpha: weight of the chosen replies' negative log-likelihood (per-token mean) added to
    the loss (TRL's name; Pang et al. 2024, "Iterative Reasoning Preference Optimization"):
    DPO alone can lower the chosen replies' likelihood along with the rejected ones'.
    """

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    rpo_alpha: float = 0.0

    def __post_init__(self) -> None:
        if not self.beta > 0:  # also rejects nan
            raise ValueError(f"preference beta must be > 0, got {self.beta}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"unknown preference loss_type {self.loss_type!r}; choose one of {LOSS_TYPES}"
            )
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(
                f"preference label_smoothing must be in [0, 0.5), got {self.label_smoothing}"
            )
        if not self.rpo_alpha >= 0:
            raise ValueError(f"preference rpo_alpha must be >= 0, got {self.rpo_alpha}")
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ValueError(
                "label_smoothing (cDPO) applies to loss_type 'sigmoid' only; IPO has no "
                "smoothed form, so set label_smoothing to 0 or use loss_type 'sigmoid'"
            )


def sequence_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """Per-sequence log-probability of the labelled tokens: shape [B].

    labels [B, T] are the model's labels (position t + 1's id is the target of position t;
    -100 where there is none); logits [N, V] are the model's `loss_only` output: one row per
    target, in row-major order, so the LM head never runs where no target is. With
    average=True the sum is divided by the number of targets: the per-token mean that IPO is
    defined on. Computed in float32 whatever the logits' dtype.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE
    if logits.ndim != 2 or logits.shape[0] != int(keep.sum()):
        raise ValueError(
            f"logits {tuple(logits.shape)} must be [N, V] with one row per target of labels "
            f"(N = {int(keep.sum())}): call the model with loss_only=True"
        )
    rows = keep.nonzero()[:, 0]
    picked = logits.float().gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
    # logit - logsumexp picks one log-probability per target without a second [N, V] tensor
    # the size of the logits (as log_softmax would keep).
    token_logps = picked - torch.logsumexp(logits.float(), dim=-1)
    total = token_logps.new_zeros(labels.shape[0]).index_add(0, rows, token_logps)
    if average:
        return total / keep.sum(-1).clamp(min=1)
    return total


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    cfg: PreferenceLoss,
    chosen_nll: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(mean loss over the batch, metrics) from log-probabilities of shape [B].

    Pass sums over the reply's tokens for "sigmoid" and per-token means for "ipo"
    (`sequence_logprobs(..., average=True)`), as TRL does: IPO's margin 1 / (2 * beta) is a
    target for h itself, so with sums it would depend on the replies' lengths. The reference
    log-probabilities get no gradient whether or not they were computed without one.
    chosen_nll (a scalar: the chosen replies' mean negative log-likelihood per token) is needed
    when cfg.rpo_alpha > 0; the loss then adds rpo_alpha * chosen_nll and the metrics nll_loss.

    Metrics (batch means, as TRL names them): rewards/chosen = beta * (policy_chosen -
    ref_chosen), rewards/rejected likewise, rewards/margins = chosen - rejected,
    rewards/accuracies = fraction of pairs with chosen reward > rejected reward,
    logps/chosen and logps/rejected = the policy's log-probabilities.
    """
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if cfg.loss_type == "sigmoid":
        eps = cfg.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(cfg.beta * h) - eps * F.logsigmoid(-cfg.beta * h)
    else:
        losses = (h - 1 / (2 * cfg.beta)) ** 2
    loss = losses.mean()
    metrics = _reward_metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected, cfg.beta)
    if cfg.rpo_alpha:
        if chosen_nll is None:
            raise ValueError("rpo_alpha > 0 needs chosen_nll, the chosen replies' NLL per token")
        loss = loss + cfg.rpo_alpha * chosen_nll
        metrics["nll_loss"] = chosen_nll.detach().item()
    return loss, metrics


def _reward_metrics(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> dict[str, float]:
    """The implicit rewards and log-probabilities as TRL logs them (batch means, floats)."""
    chosen = (beta * (policy_chosen - ref_chosen)).detach()
    rejected = (beta * (policy_rejected - ref_rejected)).detach()
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "rewards/accuracies": (chosen > rejected).to(chosen.dtype).mean().item(),
        "logps/chosen": policy_chosen.detach().mean().item(),
        "logps/rejected": policy_rejected.detach().mean().item(),
    }
