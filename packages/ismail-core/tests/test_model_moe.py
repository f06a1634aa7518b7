"""Mixture of experts: routing against a per-token reference, gate conventions, aux-loss-free
balancing, capacity dropping, expert rotation, activation checkpointing, torch.compile."""

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.model import ModelConfig, Transformer
from ismail_core.model.moe import MoE

sys.path.insert(0, str(Path(__file__).parent))  # tiny_setup.py (see its docstring)
from tiny_setup import SMALL_MOE as SMALL  # noqa: E402


def make_cfg(**overrides) -> ModelConfig:
    return ModelConfig.preset("tiny", **{**SMALL, **overrides})


def make_moe(seed=0, **overrides) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(make_cfg(**overrides))
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return moe


def reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token-by-token DeepSeek-V3 MoE: sum_k w_k expert_k(x) + shared(x)."""
    weights, indices, _ = moe.gate(x)
    rows = []
    for t in range(x.shape[0]):
        y = sum(weights[t, j] * moe.experts[int(indices[t, j])](x[t]) for j in range(moe.topk))
        rows.append(y + moe.shared_experts(x[t]))
    return torch.stack(rows)


@settings(max_examples=10, deadline=None)
@given(
    n_tokens=st.integers(1, 40),
    n_experts=st.sampled_from([4, 8]),
    topk=st.integers(1, 3),
    groups=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 10_000),
)
def test_batched_experts_match_per_token_reference(n_tokens, n_experts, topk, groups, seed):
    limited = max(1, groups // 2)
    per_group = n_experts // groups
    topk = min(topk, limited * per_group)
    moe = make_moe(
        seed,
        n_routed_experts=n_experts,
        n_activated_experts=topk,
        n_expert_groups=groups,
        n_limited_groups=limited,
        route_scale=1.7,
    ).eval()
    x = torch.randn(n_tokens, SMALL["dim"], generator=torch.Generator().manual_seed(seed))
    out, stats = moe(x)
    torch.testing.assert_close(out, reference_moe(moe, x), atol=1e-5, rtol=1e-5)
    assert stats.load.sum() == n_tokens * topk and stats.dropped == 0


def test_selection_bias_never_reaches_combine_weights():
    moe = make_moe().eval()
    moe.gate.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))  # force expert 3 into every top-2
    x = torch.randn(16, SMALL["dim"])
    weights, indices, scores = moe.gate(x)
    assert (indices == 3).any(dim=1).all()
    chosen = scores.gather(1, indices)
    torch.testing.assert_close(weights, chosen / chosen.sum(dim=1, keepdim=True))


def test_group_limited_routing_masks_other_groups_with_minus_infinity():
    # all biased scores negative: masking dropped groups with 0 instead of -inf would pick them
    moe = make_moe(n_routed_experts=8, n_expert_groups=4, n_limited_groups=1).eval()
    moe.gate.bias.fill_(-10.0)
    _, indices, _ = moe.gate(torch.randn(64, SMALL["dim"]))
    groups = indices // 2
    assert (groups == groups[:, :1]).all()


def skewed_model(**overrides) -> Transformer:
    """A model whose routers prefer expert 0 (and then 1): every hidden state leans toward
    feature 0, which the gates weigh toward those experts."""
    torch.manual_seed(0)
    model = Transformer(make_cfg(**overrides))
    with torch.no_grad():
        model.embed.weight[:, 0] += 0.04
        for moe in model.moe_layers():
            torch.nn.init.normal_(moe.gate.weight, std=0.2)
            moe.gate.weight[0, 0] += 1.0
            moe.gate.weight[1, 0] += 0.5
    return model


def imbalance(model: Transformer, ids: torch.Tensor) -> float:
    with torch.no_grad():
        loads = model(ids, return_output=True).expert_load
    return max((load.max() / load.float().mean()).item() for load in loads)


def test_aux_loss_free_balancing_moves_load_toward_uniform():
    model = skewed_model(bias_update_speed=0.02).train()
    torch.manual_seed(1)
    ids = torch.randint(0, 89, (4, 32))
    before = imbalance(model, ids)
    for _ in range(15):
        imbalance(model, ids)  # a training forward accumulates loads
        model.update_expert_bias()
    after = imbalance(model, ids)
    assert before > 1.6 and after < 1.3
    for moe in model.moe_layers():
        assert moe.gate.bias.sum().abs() < 1e-5  # re-centred
        assert moe.gate.bias[0] < 0  # the overloaded expert is pushed down


def test_update_uses_loads_since_previous_call_only():
    model = skewed_model(bias_update_speed=0.05).train()
    ids = torch.randint(0, 89, (2, 16))
    out = model(ids, return_output=True)
    moe = model.moe_layers()[0]
    assert torch.equal(moe.load_since_update, out.expert_load[0])
    model.update_expert_bias()
    assert moe.load_since_update.sum() == 0
    bias = moe.gate.bias.clone()
    model.update_expert_bias()  # nothing counted since: no change
    assert torch.equal(moe.gate.bias, bias)
    model.eval()(ids)  # evaluation forwards are not counted
    assert moe.load_since_update.sum() == 0


def test_capacity_factor_drops_and_counts_overflow():
    model = skewed_model(capacity_factor=1.0, n_activated_experts=1).eval()
    ids = torch.randint(0, 89, (2, 24))
    out = model(ids, return_output=True)
    capacity = 48 * 1 // 4
    expected = sum(int((load - capacity).clamp(min=0).sum()) for load in out.expert_load)
    assert expected > 0 and int(out.dropped_tokens) == expected


def test_dropped_tokens_keep_only_the_shared_expert():
    moe = make_moe(n_activated_experts=1, capacity_factor=0.5).eval()
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))  # every token picks expert 0
    x = torch.randn(8, SMALL["dim"])
    out, stats = moe(x)
    capacity = 1  # ceil(0.5 * 8 * 1 / 4)
    assert int(stats.dropped) == 8 - capacity
    # the first token fits: routed + shared; later ones fall back to the shared expert only
    torch.testing.assert_close(out[0], moe.experts[0](x[0]) + moe.shared_experts(x[0]))
    torch.testing.assert_close(out[1:], moe.shared_experts(x[1:]))


def test_softmax_gate_with_router_noise():
    moe = make_moe(score_func="softmax", router_noise=1.0, norm_topk_prob=False)
    x = torch.randn(64, SMALL["dim"])
    moe.eval()
    w1, i1, s1 = moe.gate(x)
    w2, i2, _ = moe.gate(x)
    assert torch.equal(i1, i2) and torch.allclose(s1.sum(-1), torch.ones(64))
    torch.testing.assert_close(w1, s1.gather(1, i1))
    moe.train()
    assert not torch.equal(moe.gate(x)[1], i1)  # noise changes some choices while training


def test_aux_loss_is_added_and_trains_the_router():
    model = skewed_model(aux_loss_coeff=0.01).train()
    ids = torch.randint(0, 89, (2, 16))
    out = model(ids, labels=ids)
    assert out.aux_loss > 0
    torch.testing.assert_close(out.loss, out.lm_loss + out.aux_loss)
    model.zero_grad()
    out.aux_loss.backward()
    assert model.moe_layers()[0].gate.weight.grad.abs().sum() > 0


def test_expert_rotation_freezes_other_experts_bit_identically():
    model = skewed_model().train()
    model.set_trainable_experts([1, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 89, (2, 16))
    model(ids, labels=ids).loss.backward()
    opt.step()
    state = model.state_dict()
    for layer, moe in enumerate(model.moe_layers()):
        for e, expert in enumerate(moe.experts):
            prefix = f"layers.{layer + 1}.ffn.experts.{e}."
            names = [k for k in state if k.startswith(prefix)]
            same = all(torch.equal(state[k], before[k]) for k in names)
            assert same == (e in (0, 2)), (prefix, same)
            for p in expert.parameters():
                assert (p.grad is None) == (e in (0, 2))
                assert (p in opt.state) == (e not in (0, 2))
    model.set_trainable_experts(None)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="expert ids must be in"):
        model.set_trainable_experts([7])


def test_activation_checkpointing_same_grads_and_loads_counted_once():
    ids = torch.randint(0, 89, (2, 16))
    results = []
    for checkpointing in (False, True):
        model = skewed_model(router_noise=0.5, aux_loss_coeff=0.01).train()
        model.activation_checkpointing = checkpointing
        torch.manual_seed(5)
        out = model(ids, labels=ids)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        loads = [m.load_since_update.clone() for m in model.moe_layers()]
        results.append((out.loss.detach(), grads, loads, out.expert_load))
    (loss_a, grads_a, loads_a, seen_a), (loss_b, grads_b, loads_b, _) = results
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5)
    for a, b, seen in zip(loads_a, loads_b, seen_a):
        assert torch.equal(a, b) and torch.equal(a, seen)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    """Inductor compiles inference (MoE routing is a graph break); training traces through
    AOT autograd (the cheaper aot_eager backend keeps this test under a minute)."""
    torch.manual_seed(0)
    model = Transformer(make_cfg(n_layers=2)).eval()
    ids = torch.randint(0, 89, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(ids), model(ids), atol=1e-5, rtol=1e-5)
    model.train()
    out = torch.compile(model, backend="aot_eager")(ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-5)


def run_with_grads(moe: MoE, x: torch.Tensor, grouped: bool):
    """Output, router stats and every gradient (None where none arrived) of one forward and
    backward with the grouped path on or forced off."""
    moe.grouped_mm = grouped
    moe.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    out, stats = moe(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad for n, p in moe.named_parameters()}
    return out.detach(), stats, x.grad, grads


@pytest.mark.parametrize("score_func", ["sigmoid", "softmax"])
@pytest.mark.parametrize("capacity_factor", [0.0, 0.75])
def test_grouped_experts_match_per_expert_loop(monkeypatch, score_func, capacity_factor):
    calls = []
    grouped_mm = torch._grouped_mm
    monkeypatch.setattr(
        torch, "_grouped_mm", lambda *a, **k: calls.append(1) or grouped_mm(*a, **k)
    )
    moe = make_moe(
        score_func=score_func, capacity_factor=capacity_factor, norm_topk_prob=False
    ).train()
    with torch.no_grad():
        moe.gate.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -50.0]))  # expert 3 is never chosen
    x = torch.randn(96, SMALL["dim"], generator=torch.Generator().manual_seed(3))
    out, stats, x_grad, grads = run_with_grads(moe, x, grouped=True)
    assert len(calls) == 2  # both projections ran grouped
    ref_out, ref_stats, ref_x_grad, ref_grads = run_with_grads(moe, x, grouped=False)
    assert len(calls) == 2  # the reference did not
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_grad, ref_x_grad, atol=1e-5, rtol=1e-5)
    for name, ref in ref_grads.items():
        assert (grads[name] is None) == (ref is None), name
        if ref is not None:
            torch.testing.assert_close(grads[name], ref, atol=1e-5, rtol=1e-5)
    assert grads["experts.3.w13.weight"] is None  # an expert without rows gets no gradient
    assert torch.equal(stats.load, ref_stats.load) and torch.equal(stats.dropped, ref_stats.dropped)
    assert (int(stats.dropped) > 0) == (capacity_factor > 0)


def test_grouped_experts_under_bf16_autocast():
    moe = make_moe().train()
    x = torch.randn(96, SMALL["dim"], generator=torch.Generator().manual_seed(4))
    results = []
    for grouped in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(run_with_grads(moe, x, grouped))
    (out, _, x_grad, grads), (ref_out, _, ref_x_grad, ref_grads) = results
    assert out.dtype == ref_out.dtype
    torch.testing.assert_close(out, ref_out, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(x_grad, ref_x_grad, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(grads["experts.0.w2.weight"], ref_grads["experts.0.w2.weight"])


def test_wrapped_expert_layers_keep_the_per_expert_loop(monkeypatch):
    """A layer that computes more than its .weight (LoRA, FP8) must be called, not read."""

    class Doubled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    monkeypatch.setattr(torch, "_grouped_mm", None)  # would fail if called
    moe = make_moe().eval()
    old = moe.experts[1].w2
    moe.experts[1].w2 = Doubled(old.in_features, old.out_features, bias=False)
    moe.experts[1].w2.weight = old.weight
    x = torch.randn(96, SMALL["dim"])
    torch.testing.assert_close(moe(x)[0], reference_moe(moe, x), atol=1e-5, rtol=1e-5)
