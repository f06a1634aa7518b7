"""Which sequences run in the next engine step, and which cache blocks they hold.

Waiting sequences are admitted in arrival order while the block manager has blocks for their
tokens (less what a cached prefix already holds) and fewer than `max_running` run. Prompts are
prefilled in chunks of at most `prefill_budget` tokens per step (shared by all prefilling
sequences), so a long prompt never stalls the decoding batch for more than one chunk. Every
sequence whose prompt is in the cache decodes one token per step, all in one batched forward
pass; when a decoding sequence needs a new block and none is left, the newest running sequence
is preempted: its blocks are released (full ones stay cached) and it goes back to the front of
the queue, to be recomputed when blocks free up (vLLM's recompute preemption).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ismail_core.model.block_manager import BlockManager

from ismail_serve.engine.sequence import Sequence


@dataclass
class PrefillChunk:
    """Tokens [start, end) of `seq` (prompt, then any output being recomputed) to compute."""

    seq: Sequence
    start: int
    end: int

    @property
    def completes_prefill(self) -> bool:
        """Whether the sequence samples its next token after this chunk."""
        return self.end == self.seq.prefill_end

    def token_ids(self) -> list[int]:
        return self.seq.history()[self.start : self.end]


@dataclass
class StepPlan:
    """The work of one engine step."""

    prefills: list[PrefillChunk] = field(default_factory=list)
    decodes: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.prefills and not self.decodes


class Scheduler:
    """Waiting queue, running set, their cache blocks and the per-step plan."""

    def __init__(self, blocks: BlockManager, max_running: int, prefill_budget: int) -> None:
        if prefill_budget < 1:
            raise ValueError(f"prefill budget must be >= 1 token, got {prefill_budget}")
        if max_running < 1:
            raise ValueError(f"need at least one running sequence, got {max_running}")
        self.blocks = blocks
        self.max_running = max_running
        self.prefill_budget = prefill_budget
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last is the newest
        self.num_preemptions = 0

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
        """Plan the decode batch (preempting where blocks run out), then prefill chunks of
        running sequences, then admit waiting ones while blocks and the budget last."""
        plan = StepPlan()
        self._plan_decodes(plan)
        budget = self.prefill_budget
        # Sequences admitted earlier and still prefilling go first, then new admissions.
        for seq in self.running:
            if budget == 0:
                break
            if not seq.prefill_done:
                budget -= self._plan_chunk(plan, seq, budget)
        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            if not self._admit(self.waiting[0]):
                break
            budget -= self._plan_chunk(plan, self.waiting.popleft(), budget)
        return plan

    def _plan_decodes(self, plan: StepPlan) -> None:
        """Give each decoding sequence the position of its last sampled token, oldest first;
        preempt the newest sequences while blocks are short."""
        for seq in list(self.running):
            if seq not in self.running or not seq.prefill_done:
                continue
            while not self.blocks.can_append(seq.seq_id):
                victim = self.running[-1]
                self.preempt(victim)
                if victim is seq:
                    break
            else:
                self.blocks.append(seq.seq_id, seq.last_token)
                plan.decodes.append(seq)

    def _admit(self, seq: Sequence) -> bool:
        """Allocate blocks for a waiting sequence's tokens if there are enough."""
        tokens = seq.history()
        # a request for prompt log-probabilities needs the logits of every prompt position,
        # so it computes them all rather than reuse cached blocks
        reuse = seq.request.prompt_logprobs is None
        if not self.blocks.can_allocate(tokens, reuse):
            return False
        seq.num_computed = self.blocks.allocate(seq.seq_id, tokens, reuse)
        seq.prefill_end = len(tokens)
        seq.has_blocks = True
        self.running.append(seq)
        return True

    @staticmethod
    def _plan_chunk(plan: StepPlan, seq: Sequence, budget: int) -> int:
        start = seq.num_computed
        end = min(seq.prefill_end, start + budget)
        plan.prefills.append(PrefillChunk(seq, start, end))
        return end - start

    def preempt(self, seq: Sequence) -> None:
        """Release a running sequence's blocks and queue it first, to be recomputed."""
        self._release(seq)
        seq.num_computed = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a finished or aborted sequence out of the queue or batch, freeing its blocks."""
        if seq.has_blocks:
            self._release(seq)
        else:
            self.waiting.remove(seq)

    def _release(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.seq_id)
        seq.has_blocks = False
