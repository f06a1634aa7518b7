"""The pool of KV-cache rows.

The cache is preallocated as `max_batch` rows of `max_model_len` positions; a running sequence
owns one row (its "slot") from admission until it finishes, so admission is just taking a free
row and finishing is giving it back.
"""

from __future__ import annotations


class KVSlotManager:
    """Hands out cache rows 0..num_slots-1; lowest free row first."""

    def __init__(self, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError(f"need at least one KV slot, got {num_slots}")
        self.num_slots = num_slots
        self._free = list(range(num_slots - 1, -1, -1))  # a stack: pop() gives the lowest

    @property
    def num_free(self) -> int:
        """Rows available for new sequences."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        """Rows owned by running sequences."""
        return self.num_slots - len(self._free)

    def allocate(self) -> int:
        """Take a free row; raises RuntimeError when none is left (the scheduler checks first)."""
        if not self._free:
            raise RuntimeError("no free KV slot")
        return self._free.pop()

    def release(self, slot: int) -> None:
        """Give a row back. Releasing a row twice or one out of range is a bug, so it raises."""
        if not 0 <= slot < self.num_slots or slot in self._free:
            raise RuntimeError(f"KV slot {slot} is not in use")
        self._free.append(slot)
        self._free.sort(reverse=True)
