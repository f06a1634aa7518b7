"""The model and its preallocated KV cache: prefill chunks and batched decode steps.

Uses the model's cache contract: `cache = model.new_cache(max_batch, max_len, ...)` and
`model(input_ids, cache=cache, start_pos=LongTensor[B], slots=LongTensor[B])`, which writes the
new tokens into the given cache rows and attends to each row's earlier positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ModelRunner:
    """Runs forward passes against one cache of `max_batch` rows x `max_len` positions."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_batch: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model.eval()
        if device is None:
            first = next(model.parameters(), None)
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.max_len = max_len
        self.cache = model.new_cache(max_batch, max_len, device=self.device, dtype=dtype)

    def cache_bytes_per_token(self) -> int:
        """Bytes of cache one token occupies (all layers)."""
        return int(self.cache.bytes_per_token())

    def cache_bytes(self) -> int:
        """Bytes of the whole preallocated cache."""
        return int(self.cache.nbytes())

    @torch.inference_mode()
    def forward(
        self,
        rows: Sequence[Sequence[int]],
        starts: Sequence[int],
        slots: Sequence[int],
        last_only: bool = False,
    ) -> torch.Tensor:
        """Write rows[i] at positions starts[i].. of cache row slots[i] in one batched call and
        return the logits at every position, (B, longest row, vocab) in the model's dtype, or
        with last_only only after each row's last token, (B, vocab): the LM head then runs
        once per row instead of once per position.

        Shorter rows are right-padded. That is safe with a causal cache: the pad positions lie
        after the row's real tokens, so none of them attends to a pad, and the row's next tokens
        overwrite the pads before anything at a later position reads them.
        """
        width = max(len(r) for r in rows)
        ids = torch.tensor([list(row) + [0] * (width - len(row)) for row in rows], dtype=torch.long)
        logits = self.model(
            ids.to(self.device),
            cache=self.cache,
            start_pos=torch.tensor(list(starts), dtype=torch.long, device=self.device),
            slots=torch.tensor(list(slots), dtype=torch.long, device=self.device),
            logits_at=(
                torch.tensor([len(r) - 1 for r in rows], device=self.device) if last_only else None
            ),
        )
        return logits
