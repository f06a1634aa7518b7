"""attention="latent": a sliding window of exact attention plus a causal latent memory.

The memory math against a direct (quadratic) formula, causality, cached == uncached through
the paged cache and ModelRunner (block boundaries, padded batches, prefix caching), training,
MoE/dense/YaRN variants, the cache's size and the refusals (HF export, packed documents)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.config import ModelConfig
from ismail_core.hf import HFFormatError, hf_architecture
from ismail_core.model import Transformer
from ismail_core.model.compiled import fused_decode_supported
from ismail_core.model.latent import memory_all, memory_at
from ismail_core.model.runner import ModelRunner

VOCAB = 97
SMALL = dict(
    vocab_size=VOCAB,
    max_seq_len=96,
    dim=48,
    n_layers=3,
    n_heads=4,
    n_kv_heads=2,
    attention="latent",
    sliding_window=6,
    n_latents=4,
    inter_dim=64,
    moe_inter_dim=24,
    n_dense_layers=1,
    n_routed_experts=4,
    n_activated_experts=2,
)
VARIANTS = {
    "moe": {},
    "dense-mha": dict(n_routed_experts=0, n_kv_heads=None),
    "yarn": dict(rope_factor=4.0, original_max_seq_len=16),
    "learned-pos": dict(pos_emb="learned", n_routed_experts=0, mlp="gelu", norm="layernorm"),
}


def make_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.preset("tiny", **{**SMALL, **overrides})).eval()


def direct_memory(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """m_l(t) = softmax over s <= t of a[..., s], applied to v: (B, G, L, T, D)."""
    T = a.shape[-1]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    weights = a.unsqueeze(-2).masked_fill(future, float("-inf")).softmax(-1)
    return torch.einsum("bglts,bsgd->bgltd", weights, v)


@settings(max_examples=15, deadline=None)
@given(T=st.integers(1, 40), chunk=st.sampled_from([1, 4, 8, 32]), scale=st.floats(0.1, 30.0))
def test_chunked_memory_equals_the_direct_prefix_softmax(T, chunk, scale):
    # scale 30 puts scores ~100 apart: a naive cumulative sum of exp() would overflow
    torch.manual_seed(T)
    a, v = torch.randn(2, 2, 3, T) * scale, torch.randn(2, T, 2, 5)
    want = direct_memory(a, v)
    got, _ = memory_all(a, v, chunk=chunk)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # the cache's form: a chunk-aligned span, a few positions per row, an empty start state
    pad = -T % chunk
    a_p = torch.nn.functional.pad(a, (0, pad))
    v_p = torch.nn.functional.pad(v, (0, 0, 0, 0, 0, pad))
    index = torch.randint(0, T, (2, 3))
    empty = torch.full((2, 2, 3), float("-inf")), torch.zeros(2, 2, 3, 5)
    at, _ = memory_at(a_p, v_p, chunk, index, empty)
    want_at = want.gather(3, index.view(2, 1, 1, 3, 1).expand(2, 2, 3, 3, 5))
    torch.testing.assert_close(at, want_at, atol=1e-5, rtol=1e-4)


def test_memory_gradients_are_finite_and_reach_every_input():
    a = (torch.randn(1, 2, 3, 20) * 20).requires_grad_()
    v = torch.randn(1, 20, 2, 4, requires_grad=True)
    memory, _ = memory_all(a, v, chunk=8)
    memory.square().sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(v.grad).all()
    assert (v.grad != 0).all()


@settings(max_examples=10, deadline=None)
@given(t=st.integers(0, 38), variant=st.sampled_from(sorted(VARIANTS)))
def test_later_tokens_never_change_earlier_logits(t, variant):
    model = make_model(**VARIANTS[variant])
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(t))
    changed = ids.clone()
    changed[:, t + 1 :] = (ids[:, t + 1 :] + 1 + torch.arange(39 - t)) % VOCAB
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_the_memory_carries_tokens_that_left_the_window():
    """Position 30 sees position 0 only through the memory: a plain sliding window of the
    same width does not notice a change there; latent attention does."""
    ids = torch.randint(0, VOCAB, (1, 31))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % VOCAB
    for kind, moved in [("latent", True), ("gqa", False)]:
        model = make_model(attention=kind, n_layers=1, n_dense_layers=1)
        with torch.no_grad():
            delta = (model(ids)[0, 30] - model(changed)[0, 30]).abs().max().item()
        assert (delta > 1e-6) == moved, (kind, delta)


def decode_through_runner(model, ids: list[int], prompt: int, block_size: int = 4):
    """Prefill `prompt` tokens, then decode the rest one token at a time, as generation does:
    the logits of every position, (len(ids), vocab)."""
    runner = ModelRunner(model, num_blocks=64, block_size=block_size, fused_decode=True)
    assert runner.decoder is model  # the fused path does not cover latent attention
    runner.blocks.allocate("s", ids[:prompt])
    out = [runner.forward(["s"], [ids[:prompt]], [0])[0]]
    for t in range(prompt, len(ids)):
        runner.blocks.append("s", ids[t])
        out.append(runner.forward(["s"], [[ids[t]]], [t])[0])
    return torch.cat(out)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("prompt", [1, 7, 16])
def test_cached_decoding_equals_the_uncached_forward(variant, prompt):
    # block size 4, window 6: decoding crosses block and window boundaries many times
    model = make_model(**VARIANTS[variant])
    ids = torch.randint(0, VOCAB, (30,)).tolist()
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0]
    got = decode_through_runner(model, ids, prompt)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_padded_batches_and_a_prefix_cached_sequence_equal_the_uncached_forward():
    """Rows of different lengths in one prefill call (right-padded), decoded together at
    different positions, then a second prompt reusing the first one's cached blocks."""
    model = make_model(seed=2)
    block = 4
    runner = ModelRunner(model, num_blocks=64, block_size=block)
    seqs = [torch.randint(0, VOCAB, (n + 5,)).tolist() for n in (3, 13, 9)]
    names = ["a", "b", "c"]
    for name, seq in zip(names, seqs):
        runner.blocks.allocate(name, seq[:-5])
    first = runner.forward(names, [s[:-5] for s in seqs], [0, 0, 0])
    steps = []
    for step in range(5):
        for name, seq in zip(names, seqs):
            runner.blocks.append(name, seq[len(seq) - 5 + step])
        rows = [[seq[len(seq) - 5 + step]] for seq in seqs]
        steps.append(runner.forward(names, rows, [len(s) - 5 + step for s in seqs])[:, 0])
    with torch.no_grad():
        for row, seq in enumerate(seqs):
            want = model(torch.tensor([seq]))[0]
            n = len(seq) - 5
            torch.testing.assert_close(first[row, :n], want[:n], atol=2e-5, rtol=1e-4)
            got = torch.stack([s[row] for s in steps])
            torch.testing.assert_close(got, want[n:], atol=2e-5, rtol=1e-4)
    # a prompt sharing b's first 10 tokens: two full blocks come from the cache
    second = seqs[1][:10] + torch.randint(0, VOCAB, (6,)).tolist()
    cached = runner.blocks.allocate("d", second)
    assert cached == 8 and runner.blocks.block_table("d")[:2] == runner.blocks.block_table("b")[:2]
    got = runner.forward(["d"], [second[cached:]], [cached])[0]
    with torch.no_grad():
        want = model(torch.tensor([second]))[0, cached:]
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_a_few_training_steps_reduce_the_loss():
    model = make_model(n_routed_experts=0).train()
    ids = torch.randint(0, VOCAB, (4, 48), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
    layer = model.layers[0].attn
    assert layer.latent_queries.grad.abs().sum() > 0 and layer.latent_keys.grad.abs().sum() > 0


def test_cache_holds_window_keys_values_and_one_memory_state_per_block():
    model = make_model()
    cache = model.new_cache(num_blocks=5, block_size=8)
    L, G, D = 3, 2, 48 // 4
    assert cache.keys.shape == cache.values.shape == (L, 6, 8, G, D)
    assert cache.memory_lse.shape == (L, 6, G, 4) and cache.memory_mean.shape == (L, 6, G, 4, D)
    token = L * 2 * G * D * 4
    state = L * G * 4 * (D + 1) * 4
    assert cache.state_bytes_per_block() == state
    assert cache.bytes_per_token() == token + -(-state // 8)
    assert cache.nbytes() == 5 * (8 * token + state)


def test_config_needs_a_window_and_latents():
    with pytest.raises(ValueError, match="sliding_window > 0"):
        ModelConfig.preset("tiny", attention="latent")
    with pytest.raises(ValueError, match="n_latents must be positive"):
        ModelConfig.preset("tiny", attention="latent", sliding_window=8, n_latents=0)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        ModelConfig.preset("tiny", attention="latent", sliding_window=8, n_kv_heads=3)
    # every preset's shape, with MoE or dense layers; ismail-512's 512 / 12 heads needs head_dim
    for preset, extra in [
        ("tiny", {}),
        ("ismail-512", dict(head_dim=64)),
        ("ismail-1024", {}),
        ("gpt2-124m", {}),
    ]:
        cfg = ModelConfig.preset(preset, attention="latent", sliding_window=64, **extra)
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_packed_documents_are_refused_with_the_reason():
    model = make_model().train()
    ids = torch.randint(0, VOCAB, (1, 10))
    doc_ids = torch.tensor([[0] * 5 + [1] * 5])
    with pytest.raises(ValueError, match="packed documents"):
        model(ids, labels=ids, doc_ids=doc_ids)


def test_hf_export_is_refused_with_the_problem_and_the_fix(tmp_path: Path, hf_tokenizer_file):
    from ismail_core.checkpoint import save_checkpoint
    from ismail_core.cli import main
    from ismail_core.tokenizer import load_tokenizer

    model = make_model()
    with pytest.raises(HFFormatError, match="no transformers equivalent.*ismail-serve"):
        hf_architecture(model.cfg)
    assert not fused_decode_supported(model)
    save_checkpoint(tmp_path / "ckpt", model, load_tokenizer(hf_tokenizer_file))
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_ismail_generate_continues_a_latent_checkpoint_greedily(
    tmp_path: Path, hf_tokenizer_file, capsys
):
    from ismail_core.checkpoint import save_checkpoint
    from ismail_core.cli import main
    from ismail_core.generate import prompt_ids
    from ismail_core.tokenizer import load_tokenizer

    tok = load_tokenizer(hf_tokenizer_file)
    model = make_model(vocab_size=tok.vocab_size)
    save_checkpoint(tmp_path / "ckpt", model, tok)
    ids = prompt_ids(tok, "Yurtta sulh")
    history = list(ids)
    with torch.no_grad():  # greedy by recomputing everything: no cache involved
        for _ in range(12):
            history.append(int(model(torch.tensor([history]))[0, -1].argmax()))
    args = ["generate", str(tmp_path / "ckpt"), "--prompt", "Yurtta sulh", "--no-stream"]
    assert main([*args, "--max-new-tokens", "12", "--temperature", "0"]) == 0
    want = tok.decode(history[len(ids) :], skip_special_tokens=True)
    assert capsys.readouterr().out == f"Yurtta sulh{want}\n"
