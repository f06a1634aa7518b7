"""Transformer behaviour: loss at init, cached decoding == full forward, cache shapes,
continuous batching rows, variants (MHA/GQA/sliding window/YaRN/learned positions)."""

import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.model import ModelConfig, ModelOutput, Transformer
from ismail_core.model.cache import row_block_tables

sys.path.insert(0, str(Path(__file__).parent))  # tiny_setup.py (see its docstring)
from tiny_setup import SMALL  # noqa: E402

VARIANTS = {
    "mla-moe": {},
    "mla-qlora-yarn": dict(q_lora_rank=24, rope_factor=4.0, original_max_seq_len=16),
    "mla-window": dict(sliding_window=5),
    "mha-dense": dict(attention="mha", n_routed_experts=0),
    "gqa-moe-window": dict(attention="gqa", n_kv_heads=2, sliding_window=6),
    "gpt2-like": dict(
        attention="mha",
        pos_emb="learned",
        mlp="gelu",
        norm="layernorm",
        bias=True,
        n_routed_experts=0,
        tie_embeddings=True,
    ),
}


def make_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.preset("tiny", **{**SMALL, **overrides})).eval()


def test_fresh_loss_is_near_ln_vocab():
    model = make_model(vocab_size=1000, dim=64).train()
    ids = torch.randint(0, 1000, (2, 32))
    out = model(ids, labels=ids)
    assert isinstance(out, ModelOutput)
    assert abs(out.loss.item() - math.log(1000)) < 0.3
    assert out.logits.shape == (2, 32, 1000)
    assert len(out.expert_load) == SMALL["n_layers"] - SMALL["n_dense_layers"]
    for load in out.expert_load:  # every token picks exactly k experts
        assert load.sum().item() == 2 * 32 * SMALL["n_activated_experts"]


def test_plain_call_returns_logits_and_labels_are_shifted_with_ignore_index():
    model = make_model()
    ids = torch.randint(0, 97, (2, 10))
    logits = model(ids)
    assert torch.is_tensor(logits) and logits.shape == (2, 10, 97)
    labels = ids.clone()
    labels[:, :5] = -100
    out = model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(
        logits[:, 4:-1].reshape(-1, 97), ids[:, 5:].reshape(-1)
    )
    torch.testing.assert_close(out.lm_loss, expected)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_incremental_decoding_matches_full_forward(variant):
    model = make_model(**VARIANTS[variant])
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        full = model(ids)
        cache, tables = row_cache(model, rows=2, max_len=32)
        pieces = [model(ids[:, :7], cache=cache, start_pos=0, block_tables=tables)]
        for t in range(7, 20):
            pieces.append(model(ids[:, t : t + 1], cache=cache, start_pos=t, block_tables=tables))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_at_one_position_per_row_equal_the_full_logits_there(variant):
    model = make_model(**VARIANTS[variant])
    ids = torch.randint(0, 97, (3, 12))
    at = torch.tensor([11, 4, 0])
    with torch.no_grad():
        full = model(ids)
        torch.testing.assert_close(model(ids, logits_at=at), full[torch.arange(3), at])
        cache, tables = row_cache(model, rows=3, max_len=16)  # a prefill into the cache too
        got = model(ids, cache=cache, block_tables=tables, logits_at=torch.full((3,), 11))
    torch.testing.assert_close(got, full[:, -1], atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="inference"):
        model(ids, labels=ids, logits_at=at)


def row_cache(model, rows: int, max_len: int, block_size: int = 4):
    """A paged cache with `rows` sequences of max_len positions in consecutive blocks."""
    tables = row_block_tables(rows, max_len, block_size)
    return model.new_cache(tables.numel(), block_size), tables


def test_mla_cache_holds_only_latent_and_rope_key():
    model = make_model()
    cache = model.new_cache(num_blocks=5, block_size=8)
    assert cache.is_latent
    assert cache.latent.shape == (3, 6, 8, SMALL["kv_lora_rank"])  # + the scratch block
    assert cache.rope_key.shape == (3, 6, 8, SMALL["qk_rope_head_dim"])
    per_token = SMALL["n_layers"] * (SMALL["kv_lora_rank"] + SMALL["qk_rope_head_dim"]) * 4
    assert cache.bytes_per_token() == per_token
    assert cache.nbytes() == 5 * 8 * per_token


def test_standard_attention_cache_holds_keys_and_values_per_kv_head():
    model = make_model(attention="gqa", n_kv_heads=2)
    cache = model.new_cache(num_blocks=2, block_size=16, dtype=torch.bfloat16)
    assert not cache.is_latent
    head_dim = SMALL["dim"] // SMALL["n_heads"]
    assert cache.keys.shape == cache.values.shape == (3, 3, 16, 2, head_dim)
    assert cache.bytes_per_token() == 3 * 2 * 2 * head_dim * 2
    mha = make_model(attention="mha").new_cache(1, 8)
    assert mha.bytes_per_token() == 3 * 2 * SMALL["n_heads"] * head_dim * 4


@settings(max_examples=8, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=2, max_size=3),
    block_perm=st.permutations(list(range(12))),
)
def test_rows_in_scattered_blocks_decode_like_single_sequences(lengths, block_perm):
    """Rows prefilled separately into arbitrary, scattered blocks, then decoded together with
    different start_pos, give each row's own full-forward logits."""
    model = make_model(seed=1)
    torch.manual_seed(len(lengths))
    seqs = [torch.randint(0, 97, (n + 3,)) for n in lengths]
    cache = model.new_cache(num_blocks=12, block_size=4)
    tables = torch.tensor(block_perm).view(3, 4)[: len(seqs)]  # 4 blocks of 4 per row
    with torch.no_grad():
        for seq, table, n in zip(seqs, tables, lengths):
            model(seq[None, :n], cache=cache, start_pos=0, block_tables=table[None])
        got = []
        for step in range(3):
            ids = torch.stack([seq[n + step] for seq, n in zip(seqs, lengths)])[:, None]
            start = torch.tensor(lengths) + step
            got.append(model(ids, cache=cache, start_pos=start, block_tables=tables)[:, 0])
        for row, (seq, n) in enumerate(zip(seqs, lengths)):
            want = model(seq[None])[0, n : n + 3]
            torch.testing.assert_close(
                torch.stack([g[row] for g in got]), want, atol=2e-5, rtol=1e-4
            )


def test_cache_misuse_has_clear_errors():
    model = make_model()
    cache, tables = row_cache(model, rows=2, max_len=8)
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="more blocks"):
        model(ids, cache=cache, start_pos=6, block_tables=tables)
    with pytest.raises(ValueError, match="block ids must be in"):
        model(ids, cache=cache, block_tables=tables + 9)
    with pytest.raises(ValueError, match="needs block_tables"):
        model(ids, cache=cache)
    with pytest.raises(ValueError, match="need a cache"):
        model(ids, start_pos=3)
    with pytest.raises(ValueError, match="start_pos must be an int or have shape"):
        model(ids, cache=cache, start_pos=torch.tensor([0, 1, 2]), block_tables=tables)


def test_sliding_window_limits_what_a_token_sees():
    model = make_model(attention="gqa", n_kv_heads=2, sliding_window=4, n_routed_experts=0)
    ids = torch.randint(0, 97, (1, 12))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 97
    with torch.no_grad():
        a, b = model(ids), model(changed)
    # one layer of window 4 reaches 3 positions back; three layers reach 9 positions
    assert torch.equal(a[0, 10:], b[0, 10:])
    assert not torch.allclose(a[0, 1], b[0, 1])


def test_yarn_changes_long_range_rotation_only():
    base = make_model()
    yarn = make_model(rope_factor=4.0, original_max_seq_len=16)
    hi = base.rotary.inv_freq[0].item(), yarn.rotary.inv_freq[0].item()
    lo = base.rotary.inv_freq[-1].item(), yarn.rotary.inv_freq[-1].item()
    assert hi[0] == pytest.approx(hi[1])  # fastest dimension extrapolates unchanged
    assert lo[1] == pytest.approx(lo[0] / 4.0)  # slowest dimension interpolated by the factor


def test_num_parameters_and_flops():
    model = make_model()
    total = sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == total
    expert = sum(p.numel() for p in model.layers[1].ffn.experts[0].parameters())
    n_moe = SMALL["n_layers"] - SMALL["n_dense_layers"]
    assert model.num_parameters(active_only=True) == total - n_moe * 2 * expert
    non_embed = model.num_parameters(active_only=True) - model.embed.weight.numel()
    attn = 6 * 3 * 4 * 32 * (16 + 12)
    assert model.flops_per_token(32) == 6 * non_embed + attn
    tied = make_model(tie_embeddings=True)
    assert tied.num_parameters() == total - tied.embed.weight.numel()


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 12), vocab=st.integers(2, 40), seed=st.integers(0, 1000))
def test_lm_cross_entropy_matches_torch_values_and_gradients(n, vocab, seed):
    from ismail_core.model.loss import lm_cross_entropy

    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, vocab, generator=g) * 3).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[torch.rand(n, generator=g) < 0.3] = -100
    targets[0] = 0  # at least one counted target
    ours = lm_cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(ours * 1.7, logits)
    ref = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    (ref_grad,) = torch.autograd.grad(ref * 1.7, logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad, ref_grad)


def test_prefill_chunks_and_decode_steps_agree_with_uncached_forward():
    """Chunked prefill (decompressed over the cache) then single steps (absorbed)."""
    model = make_model(q_lora_rank=24)
    ids = torch.randint(0, 97, (1, 16))
    cache, tables = row_cache(model, rows=1, max_len=16)
    kw = {"cache": cache, "block_tables": tables}
    with torch.no_grad():
        parts = [model(ids[:, a:b], start_pos=a, **kw) for a, b in [(0, 5), (5, 12)]]
        parts += [model(ids[:, t : t + 1], start_pos=t, **kw) for t in range(12, 16)]
        torch.testing.assert_close(torch.cat(parts, 1), model(ids), atol=2e-5, rtol=1e-4)


@pytest.mark.gpu
def test_cuda_matches_cpu_and_decodes_in_bfloat16():
    model = make_model(q_lora_rank=24)
    ids = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        want = model(ids)
        gpu = model.to("cuda")
        torch.testing.assert_close(gpu(ids.cuda()).cpu(), want, atol=1e-4, rtol=1e-3)
        gpu = gpu.to(torch.bfloat16)
        cache, tables = row_cache(gpu, rows=2, max_len=24)
        assert cache.latent.dtype == torch.bfloat16 and cache.latent.is_cuda
        kw = {"cache": cache, "block_tables": tables.cuda()}
        steps = [gpu(ids[:, :16].cuda(), start_pos=0, **kw)[:, -1]]
        for t in range(16, 23):
            steps.append(gpu(ids[:, t : t + 1].cuda(), start_pos=t, **kw)[:, -1])
        got = torch.stack(steps, 1).float().cpu()
        torch.testing.assert_close(got, want[:, 15:23], atol=0.1, rtol=0.05)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_prefill_after_a_cached_prefix_gives_the_uncached_logits(variant):
    """A prompt sharing two blocks with an earlier one: with prefix caching only the rest is
    computed, over the other prompt's cached blocks; the logits equal a full forward pass and
    the prefill of a runner without prefix caching."""
    from ismail_core.model.runner import ModelRunner

    model = make_model(**VARIANTS[variant])
    first = torch.randint(0, 97, (13,)).tolist()
    second = first[:9] + torch.randint(0, 97, (5,)).tolist()
    want = model(torch.tensor([second]))[0]
    for caching, cached in [(True, 8), (False, 0)]:
        runner = ModelRunner(model, num_blocks=8, block_size=4, enable_prefix_caching=caching)
        runner.blocks.allocate("a", first)
        runner.forward(["a"], [first], [0])
        assert runner.blocks.allocate("b", second) == cached
        got = runner.forward(["b"], [second[cached:]], [cached])[0]
        torch.testing.assert_close(got, want[cached:], atol=2e-5, rtol=1e-4)
        if caching:  # the shared blocks are the same cache memory
            assert runner.blocks.block_table("b")[:2] == runner.blocks.block_table("a")[:2]
