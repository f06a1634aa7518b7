"""Scheduler and cache-block invariants under random arrivals, chunked prefill, preemption
and finishes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.generate import ContinuationText
from ismail_core.model.block_manager import BlockManager
from ismail_core.sampling import SamplingParams
from ismail_serve.engine.scheduler import Scheduler
from ismail_serve.engine.sequence import Sequence, SequenceRequest


def make_seq(tokenizer, rid: int, prompt: list[int], max_tokens: int = 3) -> Sequence:
    req = SequenceRequest(str(rid), 0, prompt, SamplingParams(), max_tokens=max_tokens)
    return Sequence(req, ContinuationText(tokenizer, req.prompt_ids), lambda out: None, None, None)


@settings(max_examples=80, deadline=None)
@given(
    max_running=st.integers(1, 4),
    # 8 blocks of 4 hold the longest sequence (a 23-token prompt and 6 decoded tokens) alone;
    # one that never fits the cache cannot run (the server refuses it before it gets here)
    num_blocks=st.integers(8, 14),
    budget=st.integers(1, 9),
    prompts=st.lists(
        st.lists(st.integers(0, 1), min_size=1, max_size=20).map(lambda t: [5, 5, 5, *t]),
        min_size=1,
        max_size=8,
    ),
    decode_steps=st.integers(1, 6),
    caching=st.booleans(),
)
def test_every_sequence_runs_to_the_end_within_budget_and_blocks(
    tokenizer, max_running, num_blocks, budget, prompts, decode_steps, caching
):
    """Blocks of 4 tokens, so short caches force preemptions; each sequence is prefilled in
    order (from its cached prefix), decodes its tokens, and every block comes back."""
    blocks = BlockManager(num_blocks, 4, enable_prefix_caching=caching)
    sched = Scheduler(blocks, max_running, budget)
    seqs = [make_seq(tokenizer, i, p) for i, p in enumerate(prompts)]
    for seq in seqs:
        sched.add(seq)
    finished = 0
    for _ in range(3000):
        if not sched.has_work():
            break
        plan = sched.schedule()
        assert sum(c.end - c.start for c in plan.prefills) <= budget
        assert len(sched.running) <= max_running
        assert not plan.is_empty, "a step with work queued must make progress"
        blocks.check()
        for chunk in plan.prefills:
            assert chunk.start == chunk.seq.num_computed  # contiguous, in order
            assert chunk.token_ids() == chunk.seq.history()[chunk.start : chunk.end]
            chunk.seq.num_computed = chunk.end
            blocks.commit(chunk.seq.seq_id, chunk.end)
            if chunk.completes_prefill:
                chunk.seq.output_ids.append(1)  # the token sampled after the prompt
        for seq in plan.decodes:
            assert seq.prefill_done and seq in sched.running
            assert blocks.num_cached_tokens(seq.seq_id) == seq.num_tokens
            seq.num_computed = seq.num_tokens
            blocks.commit(seq.seq_id, seq.num_tokens)
            seq.output_ids.append(0)
        for seq in list(sched.running):
            if len(seq.output_ids) >= decode_steps and seq.prefill_done:
                sched.remove(seq)
                finished += 1
    assert finished == len(seqs)
    assert blocks.num_free == num_blocks and blocks.usage == 0
    assert all(len(s.output_ids) == decode_steps for s in seqs)


def test_admission_is_first_come_first_served(tokenizer):
    sched = Scheduler(BlockManager(64, 4), max_running=2, prefill_budget=100)
    seqs = [make_seq(tokenizer, i, [7, 8, i]) for i in range(4)]
    for seq in seqs:
        sched.add(seq)
    plan = sched.schedule()
    assert [c.seq for c in plan.prefills] == seqs[:2]
    for chunk in plan.prefills:
        chunk.seq.num_computed = chunk.end
    sched.remove(seqs[0])
    sched.remove(seqs[2])  # removing a waiting sequence leaves the others queued
    plan = sched.schedule()
    assert [c.seq for c in plan.prefills] == [seqs[3]]
    assert plan.decodes == [seqs[1]]


def test_out_of_blocks_preempts_the_newest_and_recomputes_it(tokenizer):
    blocks = BlockManager(num_blocks=3, block_size=4)
    sched = Scheduler(blocks, max_running=4, prefill_budget=100)
    old, new = make_seq(tokenizer, 0, [1, 2, 3, 4]), make_seq(tokenizer, 1, [5, 6, 7, 8])
    sched.add(old)
    sched.add(new)
    for chunk in sched.schedule().prefills:  # both admitted: one block each
        chunk.seq.num_computed = chunk.end
        chunk.seq.output_ids.append(9)
    plan = sched.schedule()  # each needs a second block for its 5th token; one is left
    assert plan.decodes == [old] and sched.num_preemptions == 1
    assert list(sched.waiting) == [new] and not new.has_blocks and new.num_preemptions == 1
    sched.remove(old)
    plan = sched.schedule()  # readmitted: prompt and output recomputed, then it samples
    assert [(c.seq, c.start, c.end) for c in plan.prefills] == [(new, 0, 5)]
    assert plan.prefills[0].token_ids() == [5, 6, 7, 8, 9] and plan.prefills[0].completes_prefill
