"""Scheduler and KV-slot invariants under random arrivals, chunked prefill and finishes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.generate import ContinuationText
from ismail_core.sampling import SamplingParams
from ismail_serve.engine.kv_slots import KVSlotManager
from ismail_serve.engine.scheduler import Scheduler
from ismail_serve.engine.sequence import Sequence, SequenceRequest


def make_seq(tokenizer, rid: int, prompt_len: int) -> Sequence:
    req = SequenceRequest(str(rid), 0, [7] * prompt_len, SamplingParams(), max_tokens=3)
    return Sequence(req, ContinuationText(tokenizer, req.prompt_ids), lambda out: None, None, None)


def test_slots_hand_out_each_row_once():
    slots = KVSlotManager(3)
    taken = [slots.allocate() for _ in range(3)]
    assert sorted(taken) == [0, 1, 2] and slots.num_free == 0
    with pytest.raises(RuntimeError):
        slots.allocate()
    slots.release(1)
    with pytest.raises(RuntimeError):
        slots.release(1)
    assert slots.allocate() == 1


@settings(max_examples=60, deadline=None)
@given(
    num_slots=st.integers(1, 4),
    budget=st.integers(1, 9),
    prompt_lens=st.lists(st.integers(1, 20), min_size=1, max_size=10),
    decode_steps=st.integers(1, 4),
)
def test_every_prompt_is_prefilled_once_in_order_within_budget(
    tokenizer, num_slots, budget, prompt_lens, decode_steps
):
    sched = Scheduler(num_slots, budget)
    seqs = [make_seq(tokenizer, i, n) for i, n in enumerate(prompt_lens)]
    for seq in seqs:
        sched.add(seq)
    prefilled = {s.seq_id: 0 for s in seqs}
    decodes_left = {s.seq_id: decode_steps for s in seqs}
    finished = 0
    for _ in range(1000):
        if not sched.has_work():
            break
        plan = sched.schedule()
        assert sum(c.end - c.start for c in plan.prefills) <= budget
        running_slots = [s.slot for s in sched.running]
        assert len(running_slots) <= num_slots
        assert len(set(running_slots)) == len(running_slots)
        assert sched.slots.num_used == len(sched.running)
        assert not plan.is_empty, "a step with work queued must make progress"
        for chunk in plan.prefills:
            assert chunk.start == prefilled[chunk.seq.seq_id]  # contiguous, in order
            prefilled[chunk.seq.seq_id] = chunk.end
            chunk.seq.num_computed = chunk.end
        for seq in plan.decodes:
            assert seq.prefill_done
            decodes_left[seq.seq_id] -= 1
            if decodes_left[seq.seq_id] == 0:
                sched.remove(seq)
                finished += 1
    assert finished == len(seqs)
    assert prefilled == {s.seq_id: s.num_prompt_tokens for s in seqs}
    assert sched.slots.num_free == num_slots


def test_admission_is_first_come_first_served(tokenizer):
    sched = Scheduler(num_slots=2, prefill_budget=100)
    seqs = [make_seq(tokenizer, i, 3) for i in range(4)]
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
