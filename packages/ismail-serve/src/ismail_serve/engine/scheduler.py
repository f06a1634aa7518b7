"""Which sequences run in the next engine step.

Waiting sequences are admitted in arrival order while KV slots are free. Prompts are prefilled
in chunks of at most `prefill_budget` tokens per step (shared by all prefilling sequences), so a
long prompt never stalls the decoding batch for more than one chunk. Every sequence whose prompt
is in the cache decodes one token per step, all in one batched forward pass.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ismail_serve.engine.kv_slots import KVSlotManager
from ismail_serve.engine.sequence import Sequence


@dataclass
class PrefillChunk:
    """Prompt tokens [start, end) of `seq` to write into its cache row this step."""

    seq: Sequence
    start: int
    end: int

    @property
    def completes_prompt(self) -> bool:
        return self.end == self.seq.num_prompt_tokens


@dataclass
class StepPlan:
    """The work of one engine step."""

    prefills: list[PrefillChunk] = field(default_factory=list)
    decodes: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.prefills and not self.decodes


class Scheduler:
    """Waiting queue, running set and the per-step plan."""

    def __init__(self, num_slots: int, prefill_budget: int) -> None:
        if prefill_budget < 1:
            raise ValueError(f"prefill budget must be >= 1 token, got {prefill_budget}")
        self.slots = KVSlotManager(num_slots)
        self.prefill_budget = prefill_budget
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence."""
        self.waiting.append(seq)

    def schedule(self) -> StepPlan:
        """Admit waiting sequences into free slots and plan prefill chunks and the decode batch."""
        plan = StepPlan(decodes=[s for s in self.running if s.prefill_done])
        budget = self.prefill_budget
        # Sequences admitted earlier and still prefilling go first, then new admissions.
        for seq in self.running:
            if budget == 0:
                break
            if not seq.prefill_done:
                budget -= self._plan_chunk(plan, seq, budget)
        while self.waiting and self.slots.num_free and budget > 0:
            seq = self.waiting.popleft()
            seq.slot = self.slots.allocate()
            self.running.append(seq)
            budget -= self._plan_chunk(plan, seq, budget)
        return plan

    @staticmethod
    def _plan_chunk(plan: StepPlan, seq: Sequence, budget: int) -> int:
        start = seq.num_computed
        end = min(seq.num_prompt_tokens, start + budget)
        plan.prefills.append(PrefillChunk(seq, start, end))
        return end - start

    def remove(self, seq: Sequence) -> None:
        """Take a finished or aborted sequence out of the queue or batch, freeing its slot."""
        if seq.slot is not None:
            self.running.remove(seq)
            self.slots.release(seq.slot)
            seq.slot = None
        else:
            self.waiting.remove(seq)
