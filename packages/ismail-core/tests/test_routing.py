"""The routing decision of a forward pass (return_routing=True) and the router entropy the
trainer logs: both must be exactly what the gates compute, from the same pass."""

import math
import sys
from pathlib import Path

import pytest
import torch
from ismail_core.model import ModelConfig, Transformer
from ismail_core.model.moe import MoE

sys.path.insert(0, str(Path(__file__).parent))  # tiny_setup.py (see its docstring)
from tiny_setup import SMALL_MOE  # noqa: E402

SMALL = {**SMALL_MOE, "n_layers": 4, "n_routed_experts": 8}


def make_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.preset("tiny", **{**SMALL, **overrides}))
    # a random, non-zero selection bias: routing must select with it and weigh without it
    for moe in model.moe_layers():
        moe.gate.bias.normal_(std=0.05)
    return model.eval()


def gate_inputs(model: Transformer, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each MoE layer's input hidden states (by layer index) in a plain forward pass."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        moe.register_forward_pre_hook(lambda m, args: seen.__setitem__(m.layer_id, args[0]))
        for moe in model.moe_layers()
    ]
    try:
        model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"score_func": "softmax", "norm_topk_prob": False},
        {"n_expert_groups": 4, "n_limited_groups": 2, "n_activated_experts": 3},
        {"capacity_factor": 1.0},
    ],
    ids=["sigmoid", "softmax", "grouped", "capacity"],
)
def test_routing_is_what_the_gate_computes_on_the_same_hidden_states(overrides):
    model = make_model(**overrides)
    ids = torch.randint(0, SMALL["vocab_size"], (3, 11))
    with torch.no_grad():
        out = model(ids, return_routing=True)
        inputs = gate_inputs(model, ids)
    moe_ids = [i for i, layer in enumerate(model.layers) if isinstance(layer.ffn, MoE)]
    assert [r.layer for r in out.routing] == moe_ids == [1, 2, 3]
    k = model.cfg.n_activated_experts
    dropped = 0
    for routing, moe in zip(out.routing, model.moe_layers()):
        with torch.no_grad():
            weights, indices, _ = moe.gate(inputs[routing.layer].reshape(-1, SMALL["dim"]))
        assert routing.expert_ids.shape == routing.weights.shape == (3, 11, k)
        assert torch.equal(routing.expert_ids.reshape(-1, k), indices)
        assert torch.equal(routing.weights.reshape(-1, k), weights)
        assert not routing.weights.requires_grad
        if model.cfg.capacity_factor > 0:
            keep = moe._keep_within_capacity(indices)
            assert torch.equal(routing.kept.reshape(-1, k), keep)
            dropped += int((~keep).sum())
        else:
            assert routing.kept is None
    assert dropped == int(out.dropped_tokens)


def test_routing_counts_agree_with_the_expert_load():
    model = make_model()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 9))
    out = model(ids, return_routing=True)
    for routing, load in zip(out.routing, out.expert_load):
        counts = torch.bincount(routing.expert_ids.flatten(), minlength=SMALL["n_routed_experts"])
        assert torch.equal(counts, load)


def test_logits_are_identical_with_routing_on_and_off():
    model = make_model()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 13))
    with torch.no_grad():
        plain = model(ids)
        routed = model(ids, return_routing=True)
        at = torch.tensor([12, 5])
        plain_last = model(ids, logits_at=at)
        last = model(ids, logits_at=at, return_routing=True)
    assert torch.equal(plain, routed.logits)
    assert torch.equal(last.logits, plain_last)
    assert last.routing[0].expert_ids.shape[:2] == (2, 13)  # routing covers every position
    assert model(ids, return_output=True).routing is None  # off unless asked


def test_a_dense_model_reports_no_routing():
    model = make_model(n_routed_experts=0)
    out = model(torch.randint(0, SMALL["vocab_size"], (1, 5)), return_routing=True)
    assert out.routing == [] and out.expert_load == []


def test_router_entropy_is_the_mean_entropy_of_the_normalised_scores_in_training_only():
    model = make_model().train()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 10))
    inputs = {}
    hooks = [
        moe.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m.layer_id, a[0]))
        for moe in model.moe_layers()
    ]
    out = model(ids, labels=ids)
    for hook in hooks:
        hook.remove()
    assert len(out.router_entropy) == len(model.moe_layers())
    for entropy, moe in zip(out.router_entropy, model.moe_layers()):
        with torch.no_grad():
            _, _, scores = moe.gate(inputs[moe.layer_id].reshape(-1, SMALL["dim"]))
        probs = scores / scores.sum(-1, keepdim=True)
        expected = -(probs * probs.log()).sum(-1).mean()
        assert torch.allclose(entropy, expected, atol=1e-6)
        assert 0 < float(entropy) <= math.log(SMALL["n_routed_experts"]) + 1e-6
    assert model.eval()(ids, return_output=True).router_entropy == []
