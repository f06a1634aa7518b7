"""The fused decode step (ismail_core.model.compiled): equal to the model's cached forward."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from ismail_core import ModelConfig, Transformer
from ismail_core.generate import BatchGeneration, generate_ids
from ismail_core.model.compiled import FastDecoder, fast_decoder, fused_decode_supported
from ismail_core.model.runner import ModelRunner
from ismail_core.sampling import SamplingParams

sys.path.insert(0, str(Path(__file__).parent))  # tiny_setup.py (see its docstring)
from tiny_setup import SMALL as SMALL_MODEL  # noqa: E402

SMALL = {**SMALL_MODEL, "n_shared_experts": 1}

VARIANTS = {
    "mla-moe": {},
    "mla-q-lora": dict(q_lora_rank=24),
    "mla-softmax-gate-no-shared": dict(
        score_func="softmax", n_shared_experts=0, norm_topk_prob=False
    ),
    "gqa": dict(attention="gqa", n_kv_heads=2, head_dim=12),
    "gqa-sliding-window": dict(attention="gqa", n_kv_heads=2, head_dim=12, sliding_window=5),
    "gqa-bias": dict(attention="gqa", n_kv_heads=2, head_dim=12, bias=True),
    "mla-capacity": dict(capacity_factor=1.0),
    "dense": dict(n_dense_layers=3),
    "yarn": dict(rope_factor=4.0, original_max_seq_len=16),
    "mha-layernorm-gelu": dict(
        attention="mha",
        norm="layernorm",
        mlp="gelu",
        n_dense_layers=3,
        bias=True,
        head_dim=12,
        n_routed_experts=0,
    ),
    "learned-positions": dict(
        attention="mha", pos_emb="learned", norm="layernorm", mlp="gelu", n_routed_experts=0
    ),
}


def make_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.preset("tiny", **{**SMALL, **overrides})).eval()
    with torch.no_grad():  # non-trivial norm weights and gate biases
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
        for moe in model.moe_layers():
            moe.gate.bias.normal_(0, 0.05)
    return model


def decode_both(model, fast, prompts, steps):
    """Prefill each prompt, then decode `steps` greedy tokens for all rows together through a
    runner on `model` and one on `fast`, feeding both the reference's tokens; returns the
    per-step logits of both, (steps, B, vocab) each."""
    runners = [
        ModelRunner(model, num_blocks=32, block_size=4, fused_decode=False),
        ModelRunner(fast, num_blocks=32, block_size=4),
    ]
    history = [list(p) for p in prompts]
    logits = [[], []]
    last = None
    for runner in runners:
        outs = []
        for row, ids in enumerate(prompts):
            runner.blocks.allocate(row, ids)
            outs.append(runner.forward([row], [ids], [0], last_only=True)[0])
        last = torch.stack(outs) if last is None else last
    for _ in range(steps):
        tokens = last.argmax(-1).tolist()
        for row, token in enumerate(tokens):
            history[row].append(token)
        for which, runner in enumerate(runners):
            for row in range(len(prompts)):
                runner.blocks.append(row, history[row][-1])
            out = runner.forward(
                list(range(len(prompts))),
                [[h[-1]] for h in history],
                [len(h) - 1 for h in history],
                last_only=True,
            )
            logits[which].append(out.float())
        last = logits[0][-1]
    return torch.stack(logits[0]), torch.stack(logits[1])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_decode_equals_model(variant: str, batch: int) -> None:
    model = make_model(**VARIANTS[variant])
    prompts = [[1, 5, 9, 2, 7], [3, 3, 8], [11, 4, 6, 6, 1, 2, 9, 30, 40]][:batch]
    decoder = fast_decoder(model)
    ref, fast = decode_both(model, decoder, prompts, steps=12)
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-4)
    assert decoder.fused_steps == (0 if variant == "learned-positions" else 12)


def test_greedy_generation_is_unchanged() -> None:
    """generate_ids (fused on a CPU, the default) against the model's own decode steps."""
    model = make_model()
    params = SamplingParams(temperature=0)
    ids = [1, 2, 3, 4]
    eager = BatchGeneration(model, [ids], 20, [params], fused_decode=False)
    assert isinstance(eager.runner.decoder, Transformer)
    want = [step[0] for step in iter(eager.step, {})]
    assert list(generate_ids(model, ids, 20, params)) == want


@pytest.mark.parametrize("upcast", [True, False])
def test_bf16_decode_within_bf16_tolerance(upcast: bool) -> None:
    """A bf16 model's fused step (float32 copies of the small matrices, or all bf16) is as
    close to the float32 model as the bf16 model's own cached forward is."""
    model = make_model()
    model16 = make_model().to(torch.bfloat16)
    prompts = [[1, 5, 9, 2, 7]]
    ref32, _ = decode_both(model, model, prompts, steps=8)
    ref16, fast16 = decode_both(model16, FastDecoder(model16, upcast_bf16=upcast), prompts, 8)
    # both decode the bf16 model's own greedy tokens; compare their logits to each other and
    # the bf16 model's error against float32 on the first step (same history there)
    scale = ref32.abs().max()
    torch.testing.assert_close(fast16, ref16, atol=0.03 * scale, rtol=0.05)
    eager_err = (ref16[0] - ref32[0]).abs().max()
    fast_err = (fast16[0] - ref32[0]).abs().max()
    assert fast_err <= 2 * eager_err + 1e-3 * scale


def test_other_calls_go_to_the_model() -> None:
    """Training, prefill chunks and gradient-enabled calls are the model's own."""
    model = make_model()
    fast = fast_decoder(model)
    ids = torch.randint(0, 97, (2, 10))
    torch.testing.assert_close(fast(ids), model(ids), atol=0, rtol=0)
    out, ref = fast(ids, labels=ids), model(ids, labels=ids)
    torch.testing.assert_close(out.loss, ref.loss, atol=0, rtol=0)
    model.train()
    loss = fast(ids, labels=ids).loss
    loss.backward()
    assert model.embed.weight.grad is not None


def test_new_weights_are_picked_up() -> None:
    """The fused path reads the model's current weights: after load_state_dict (in place)
    and after an in-place update of a bf16 model whose float32 copies must be rebuilt."""
    for dtype, upcast in ((torch.float32, False), (torch.bfloat16, True)):
        model = make_model().to(dtype)
        other = make_model(seed=1).to(dtype)
        fast = FastDecoder(model, upcast_bf16=upcast)
        prompts = [[1, 5, 9]]
        decode_both(model, fast, prompts, steps=2)  # builds the fused weights
        model.load_state_dict(other.state_dict())
        ref, out = decode_both(other, fast, prompts, steps=3)
        tol = 1e-5 if dtype == torch.float32 else 0.05 * ref.abs().max().item()
        torch.testing.assert_close(out, ref, atol=tol, rtol=0.05)


def test_the_wrapper_has_the_models_interface() -> None:
    model = make_model()
    fast = fast_decoder(model)
    assert fast.cfg is model.cfg
    runner = ModelRunner(fast, num_blocks=4, block_size=4)
    assert runner.cache.latent.dtype == model.embed.weight.dtype
    assert sum(p.numel() for p in fast.parameters()) == sum(p.numel() for p in model.parameters())
    assert fast.moe_layers() == model.moe_layers()


def test_two_threads_give_the_same_logits() -> None:
    """Layers and LM head on 1 thread or on all (timed, or fixed): the same numbers."""
    model = make_model()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        decoder = fast_decoder(model)
        ref, out = decode_both(model, decoder, [[1, 5, 9, 2]], steps=12)
        assert decoder._layer_choice.choice in (1, 2)  # 5 timed steps of each, then a choice
        fixed = fast_decoder(model, layer_threads=2, head_threads=1)
        torch.testing.assert_close(decode_both(model, fixed, [[1, 5, 9, 2]], 4)[1], ref[:4])
        assert torch.get_num_threads() == 2  # restored after each step
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_thread_choice_takes_the_faster_and_measures_again() -> None:
    from ismail_core.model.compiled import _ThreadChoice

    choice = _ThreadChoice(samples=2, period=3)
    picks = []
    for _ in range(4):  # alternate while measuring: 2 threads is faster here
        n = choice.pick(2)
        picks.append(n)
        choice.record(n, 1.0 if n == 1 else 0.5)
    assert sorted(picks) == [1, 1, 2, 2] and choice.choice == 2
    assert [choice.pick(2) for _ in range(2)] == [2, 2]
    assert choice.pick(2) in (1, 2) and choice.choice is None  # period over: measure again
    choice.pick(4)  # a new thread count starts afresh
    assert choice.times == {1: [], 4: []}


def test_layers_it_cannot_read_keep_the_models_own_decode() -> None:
    """A layer that computes something else from its weights (FP8, LoRA) must not be read as
    a plain matrix: such models decode through their own forward."""

    class Doubled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = make_model()
    assert fused_decode_supported(model)
    wo = model.layers[0].attn.wo
    model.layers[0].attn.wo = Doubled(wo.in_features, wo.out_features, bias=False)
    assert not fused_decode_supported(model)
    assert ModelRunner(model, num_blocks=4, block_size=4).decoder is model
