"""Language-model cross-entropy with a one-pass backward.

F.cross_entropy keeps its own (N, vocab) log-softmax output and, in backward, zero-fills an
(N, vocab) gradient before scattering into it. This version saves only the logits it was given
(which the caller holds anyway) plus one float per row, and builds the gradient directly as
softmax - onehot: the same values with one vocab-sized buffer fewer and one pass less.
"""

from __future__ import annotations

import torch


class _LMCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int):
        valid = targets != ignore_index
        safe_targets = targets.masked_fill(~valid, 0)
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(1, safe_targets[:, None]).squeeze(1)
        count = valid.sum()
        # nan when no target is valid, as F.cross_entropy gives
        loss = ((lse - picked) * valid).sum() / count
        ctx.save_for_backward(logits, safe_targets, valid, lse, count)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        logits, safe_targets, valid, lse, count = ctx.saved_tensors
        grad = torch.sub(logits, lse[:, None]).exp_()  # softmax
        grad.scatter_add_(1, safe_targets[:, None], -torch.ones_like(lse)[:, None])
        grad.mul_((valid * grad_loss / count).to(grad.dtype)[:, None])
        return grad, None, None


def lm_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Mean cross-entropy of logits (N, vocab) against targets (N,), skipping ignore_index;
    computed in float32 whatever the logits' dtype."""
    return _LMCrossEntropy.apply(logits.float(), targets, ignore_index)
