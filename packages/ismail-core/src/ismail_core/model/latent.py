"""The math of causal latent-vector attention (`attention="latent"`), shared by training and
the paged cache.

Design (a sliding window of exact attention plus a causal, prefix-normalised latent memory,
after Luna's causal pack/unpack and Latte): each key/value head g has n_latents learned latent
queries q_l. The memory entry l at position t is the softmax-weighted mean of the values so far,

    m_l(t) = sum_{s<=t} exp(a_ls) v_s / sum_{s<=t} exp(a_ls),   a_ls = scale * q_l . k_s,

with k_s the key before rotary positions (the latents are position-free summaries). A token
attends with one softmax jointly over the exact keys of its window (positions t-W+1..t, rotated)
and the n_latents memory entries, whose keys are learned per-latent keys e_l scored against
the token's unrotated query. Causal by construction (m_l(t) sums over s <= t only).

A memory state is (lse, mean): the log of the denominator and the normalised numerator, so two
states of consecutive spans combine stably (`combine`). Training splits the sequence into
chunks: a masked softmax inside each chunk (chunk x chunk per latent) and a prefix over chunk
summaries (chunks x chunks), so the cost is linear in T for a fixed chunk. The paged cache uses
the cache block as the chunk and keeps the inclusive state at each block's end; a cached call
rebuilds m(t) from the previous block's end state plus the keys/values of t's own block.

Tensor layouts: scores a (B, G, L, T) for G key/value heads and L latents; values v (B, T, G, D);
states lse (B, G, L, ...) and mean (B, G, L, ..., D). Memory math runs in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

TRAIN_CHUNK = 32  # positions per chunk of the training-time memory (any size gives the same m)


def combine(
    lse1: torch.Tensor, mean1: torch.Tensor, lse2: torch.Tensor, mean2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The state of two disjoint spans from theirs: lse = logaddexp, means weighted by their
    share of the total. An empty span (lse -inf, mean 0) is the identity."""
    lse = torch.logaddexp(lse1, lse2)
    w1, w2 = (lse1 - lse).exp().unsqueeze(-1), (lse2 - lse).exp().unsqueeze(-1)
    return lse, w1 * mean1 + w2 * mean2


def _chunks(a: torch.Tensor, v: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """a (B, G, L, n*C) -> (B, G, L, n, C); v (B, n*C, G, D) -> (B, n, C, G, D)."""
    B, G, L, T = a.shape
    if T % chunk:
        raise ValueError(f"memory length {T} is not a multiple of the chunk {chunk}")
    n = T // chunk
    return a.view(B, G, L, n, chunk), v.reshape(B, n, chunk, G, v.shape[-1])


def chunk_summaries(a_c: torch.Tensor, v_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The state of each whole chunk: lse (B, G, L, n) and mean (B, G, L, n, D)."""
    lse = a_c.logsumexp(-1)
    p = (a_c - lse.unsqueeze(-1)).exp()
    return lse, torch.einsum("bglnc,bncgd->bglnd", p, v_c)


def prefix_states(
    lse: torch.Tensor,
    mean: torch.Tensor,
    init: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """From chunk summaries (B, G, L, n[, D]) and an optional state before the first chunk
    (lse (B, G, L), mean (B, G, L, D)): the state before each chunk (exclusive prefix) and
    after it (inclusive). Chunks are few (T / chunk), so the (n, n) weights of the inclusive
    means are cheap, and every exponent is <= 0: logcumsumexp bounds each summary's lse."""
    n = lse.shape[-1]
    total = lse.logcumsumexp(-1)  # (B, G, L, n)
    expo = lse.unsqueeze(-2) - total.unsqueeze(-1)  # (B, G, L, j, i): summary i in prefix j
    later = torch.ones(n, n, dtype=torch.bool, device=lse.device).triu(1)
    weights = expo.masked_fill(later, float("-inf")).exp()
    incl = (total, torch.einsum("bglji,bglid->bgljd", weights, mean))
    if init is not None:
        init_lse, init_mean = init[0].unsqueeze(-1), init[1].unsqueeze(-2)
        incl = combine(init_lse, init_mean, *incl)
        first = init_lse, init_mean
    else:
        first = torch.full_like(lse[..., :1], float("-inf")), torch.zeros_like(mean[..., :1, :])
    excl = (
        torch.cat([first[0], incl[0][..., :-1]], dim=-1),
        torch.cat([first[1], incl[1][..., :-1, :]], dim=-2),
    )
    return excl, incl


def memory_all(
    a: torch.Tensor, v: torch.Tensor, chunk: int = TRAIN_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """m_l(t) at every position: a (B, G, L, T) scores, v (B, T, G, D) -> memory (B, G, L, T, D)
    and its lse (B, G, L, T). T is padded to a multiple of `chunk` at the end (padding comes
    after every real position, so causality keeps it out of their memory)."""
    B, G, L, T = a.shape
    pad = -T % chunk
    if pad:
        a = F.pad(a, (0, pad))
        v = F.pad(v, (0, 0, 0, 0, 0, pad))
    a_c, v_c = _chunks(a, v, chunk)
    # inside a chunk: position t's share of its chunk is a softmax over chunk positions <= t
    later = torch.ones(chunk, chunk, dtype=torch.bool, device=a.device).triu(1)
    scores = a_c.unsqueeze(-2).masked_fill(later, float("-inf"))  # (B, G, L, n, t, s)
    part_lse = scores.logsumexp(-1)
    p = (scores - part_lse.unsqueeze(-1)).exp()
    part = torch.einsum("bglnts,bnsgd->bglntd", p, v_c)
    # the last row of each chunk is that chunk's summary
    excl, _ = prefix_states(part_lse[..., -1], part[..., -1, :], None)
    lse, mem = combine(excl[0].unsqueeze(-1), excl[1].unsqueeze(-2), part_lse, part)
    n = a_c.shape[3]
    mem = mem.reshape(B, G, L, n * chunk, -1)[..., :T, :]
    return mem, lse.reshape(B, G, L, n * chunk)[..., :T]


def memory_at(
    a: torch.Tensor,
    v: torch.Tensor,
    chunk: int,
    out_index: torch.Tensor,
    init: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """m_l(t) at some positions of a chunk-aligned span: a (B, G, L, n*C), v (B, n*C, G, D),
    out_index (B, T) positions in the span, init the state before the span.

    Returns memory (B, G, L, T, D) and the inclusive state after each chunk (lse (B, G, L, n),
    mean (B, G, L, n, D)). Only the chunks of the wanted positions are expanded, so a decode
    step costs one chunk of work, not the span's chunk x chunk."""
    a_c, v_c = _chunks(a, v, chunk)
    B, G, L, n, C = a_c.shape
    excl, incl = prefix_states(*chunk_summaries(a_c, v_c), init)
    j, offset = out_index // C, out_index % C  # (B, T)
    T = j.shape[1]
    rows = a_c.gather(3, j.view(B, 1, 1, T, 1).expand(B, G, L, T, C))  # (B, G, L, T, C)
    later = torch.arange(C, device=a.device).view(1, 1, 1, 1, C) > offset.view(B, 1, 1, T, 1)
    rows = rows.masked_fill(later, float("-inf"))
    part_lse = rows.logsumexp(-1)
    p = (rows - part_lse.unsqueeze(-1)).exp()
    idx = j.view(B, T, 1, 1, 1).expand(B, T, C, G, v_c.shape[-1])
    part = torch.einsum("bgltc,btcgd->bgltd", p, v_c.gather(1, idx))
    prev_lse = excl[0].gather(3, j.view(B, 1, 1, T).expand(B, G, L, T))
    prev_mean = excl[1].gather(3, j.view(B, 1, 1, T, 1).expand(B, G, L, T, excl[1].shape[-1]))
    _, mem = combine(prev_lse, prev_mean, part_lse, part)
    return mem, incl


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor,
    mem_scores: torch.Tensor,
    memory: torch.Tensor,
    window: int,
) -> torch.Tensor:
    """One softmax over each query's window of exact keys and its memory entries.

    q (B, T, G, R, D) rotated queries (R query heads per key/value head); k, v (B, T + W - 1,
    G, D): query i's window is keys i .. i + W - 1 (the last is its own position), of which
    key_valid (B, T + W - 1) marks the real ones; mem_scores (B, G, R, T, L) already scaled;
    memory (B, G, L, T, D). Returns (B, T, G, R, D). Queries go in blocks of Q = min(W, T),
    each against its Q + W - 1 keys, so the cost is linear in T (banded attention) and a
    decode step (T = 1) scores exactly its W keys."""
    B, T, G, R, D = q.shape
    W, Q = window, min(window, T)
    n, K = -(-T // Q), Q + window - 1
    pad = F.pad
    q = pad(q, (0, 0, 0, 0, 0, 0, 0, n * Q - T)).view(B, n, Q, G, R, D)
    key_pad = n * Q + W - 1 - k.shape[1]  # room for the last block's keys
    k_win = pad(k, (0, 0, 0, 0, 0, key_pad)).unfold(1, K, Q)  # (B, n, G, D, K)
    v_win = pad(v, (0, 0, 0, 0, 0, key_pad)).unfold(1, K, Q)
    valid = pad(key_valid, (0, key_pad)).unfold(1, K, Q)  # (B, n, K)
    i, c = torch.arange(Q, device=q.device)[:, None], torch.arange(K, device=q.device)
    band = (c >= i) & (c < i + W)  # (Q, K): query i of a block sees keys i .. i + W - 1
    allowed = band & valid[:, :, None, :]  # (B, n, Q, K)
    scores = torch.einsum("bnigrd,bngdc->bgrnic", q.float(), k_win.float())
    scores = scores.masked_fill(~allowed[:, None, None], float("-inf"))
    scores = scores.reshape(B, G, R, n * Q, K)[:, :, :, :T]
    probs = torch.cat([scores, mem_scores.float()], dim=-1).softmax(-1)
    p_win, p_mem = probs.split([K, mem_scores.shape[-1]], dim=-1)
    p_win = pad(p_win, (0, 0, 0, n * Q - T)).reshape(B, G, R, n, Q, K)
    out = torch.einsum("bgrnic,bngdc->bnigrd", p_win, v_win.float()).reshape(B, n * Q, G, R, D)
    out = out[:, :T] + torch.einsum("bgrtl,bgltd->btgrd", p_mem, memory)
    return out.to(q.dtype)


@dataclass
class LatentView:
    """Where a cached call of latent attention reads and writes (built by `latent_view`).

    window_slots/window_positions/window_valid (B, T + W - 1): the cache slots, positions and
    reality (position >= 0) of the keys in the new tokens' windows, from start - W + 1;
    memory_slots (B, M): slots of the memory span, the whole blocks from the block of `start`
    (M = chunks * block_size); out_index (B, T): the new tokens' places in that span;
    init_block/has_init (B,): the block whose end state starts the span (scratch, unused, when
    the span starts at position 0); state_blocks (B, chunks): the block each chunk's end state
    is written to (scratch for chunks this call does not complete).
    """

    window_slots: torch.Tensor
    window_positions: torch.Tensor
    window_valid: torch.Tensor
    memory_slots: torch.Tensor
    out_index: torch.Tensor
    init_block: torch.Tensor
    has_init: torch.Tensor
    state_blocks: torch.Tensor


def latent_view(
    tables: torch.Tensor,
    start: torch.Tensor,
    seq_len: int,
    block_size: int,
    window: int,
    scratch: int,
) -> LatentView:
    """The LatentView of a cached call writing seq_len tokens at positions start (B,) of rows
    whose blocks are tables (B, blocks). Positions past a row's table read the scratch block
    (only ever later than the row's real tokens, so causality keeps them out)."""
    B, width = tables.shape
    size, device = block_size, tables.device

    def slots(pos: torch.Tensor) -> torch.Tensor:
        block = pos.clamp(min=0) // size
        inside = (pos >= 0) & (block < width)
        ids = tables.gather(1, block.clamp(max=width - 1))
        return torch.where(inside, ids, scratch) * size + pos.clamp(min=0) % size

    win_pos = start[:, None] - window + 1 + torch.arange(seq_len + window - 1, device=device)
    first_block = start // size  # (B,)
    chunks = -(-(seq_len + size - 1) // size)
    mem_pos = first_block[:, None] * size + torch.arange(chunks * size, device=device)
    block_idx = first_block[:, None] + torch.arange(chunks, device=device)  # (B, chunks)
    ends = (block_idx + 1) * size - 1
    complete = (ends <= (start + seq_len - 1)[:, None]) & (block_idx < width)
    state_blocks = torch.where(complete, tables.gather(1, block_idx.clamp(max=width - 1)), scratch)
    prev = (first_block - 1).clamp(min=0)
    has_init = first_block > 0
    init_block = torch.where(has_init, tables.gather(1, prev[:, None])[:, 0], scratch)
    return LatentView(
        window_slots=slots(win_pos),
        window_positions=win_pos.clamp(min=0),
        window_valid=win_pos >= 0,
        memory_slots=slots(mem_pos),
        out_index=start[:, None]
        - first_block[:, None] * size
        + torch.arange(seq_len, device=device),
        init_block=init_block,
        has_init=has_init,
        state_blocks=state_blocks,
    )
