"""The model with a paged cache and its block manager: batched forward calls for sequences.

`ismail_core.generate` and ismail-serve's engine both decode through this class: a sequence is
admitted with `blocks.allocate(seq_id, token_ids)` (which returns how many leading positions a
cached prefix already holds), grows with `blocks.append`, and is released with `blocks.free`;
`forward` writes rows of new tokens at the sequences' next positions and returns logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .block_manager import BlockManager
from .cache import blocks_for
from .compiled import FastDecoder, fused_decode_supported
from .transformer import Transformer


class ModelRunner:
    """Runs forward passes of `model` against one paged cache of `num_blocks` blocks.

    fused_decode: one-token steps (decoding) take `compiled.FastDecoder`'s hand-fused path,
    where per-op overhead, not arithmetic, bounds a small model (None: on a CPU; models it
    does not cover, such as FP8 or LoRA layers, always run their own forward). Passing a
    FastDecoder as the model uses it as given.
    """

    def __init__(
        self,
        model: Transformer | FastDecoder,
        num_blocks: int,
        block_size: int = 16,
        enable_prefix_caching: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        fused_decode: bool | None = None,
    ) -> None:
        self.model = model.eval()
        if device is None:
            first = next(model.parameters(), None)
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)
        self.cache = model.new_cache(num_blocks, block_size, device=self.device, dtype=dtype)
        self.blocks = BlockManager(num_blocks, block_size, enable_prefix_caching)
        if fused_decode is None:
            fused_decode = self.device.type == "cpu"
        self.decoder = self.model
        # a FastDecoder given as the model is used as it is
        if fused_decode and isinstance(model, Transformer) and fused_decode_supported(model):
            self.decoder = FastDecoder(model)

    @property
    def num_blocks(self) -> int:
        return self.cache.num_blocks

    @property
    def block_size(self) -> int:
        return self.cache.block_size

    def cache_bytes_per_token(self) -> int:
        """Bytes of cache one token occupies (all layers)."""
        return int(self.cache.bytes_per_token())

    def cache_bytes(self) -> int:
        """Bytes of the cache blocks."""
        return int(self.cache.nbytes())

    @torch.inference_mode()
    def forward(
        self,
        seq_ids: Sequence[object],
        rows: Sequence[Sequence[int]],
        starts: Sequence[int],
        last_only: bool = False,
    ) -> torch.Tensor:
        """Write rows[i] at positions starts[i].. of sequence seq_ids[i] in one batched call and
        return the logits at every position, (B, longest row, vocab) in the model's dtype, or
        with last_only only after each row's last token, (B, vocab): the LM head then runs
        once per row instead of once per position. The written positions are then committed
        to the block manager (their full blocks become reusable).

        Shorter rows are right-padded. That is safe with a causal cache: the pad positions lie
        after the row's real tokens, so none of them attends to a pad; they write either into
        the row's own uncomputed positions (overwritten before anything reads them) or, past
        the row's blocks, into the scratch block.
        """
        width = max(len(r) for r in rows)
        ids = torch.tensor([list(row) + [0] * (width - len(row)) for row in rows], dtype=torch.long)
        model = self.decoder if width == 1 else self.model
        logits = model(
            ids.to(self.device),
            cache=self.cache,
            start_pos=torch.tensor(list(starts), dtype=torch.long, device=self.device),
            block_tables=self._block_tables(seq_ids, max(starts) + width),
            logits_at=(
                torch.tensor([len(r) - 1 for r in rows], device=self.device) if last_only else None
            ),
        )
        for seq_id, row, start in zip(seq_ids, rows, starts):
            self.blocks.commit(seq_id, start + len(row))
        return logits

    def _block_tables(self, seq_ids: Sequence[object], n_positions: int) -> torch.Tensor:
        """(B, W) block ids covering n_positions per row, short tables padded with scratch."""
        width = blocks_for(n_positions, self.block_size)
        scratch = self.cache.scratch_block
        tables = []
        for seq_id in seq_ids:
            table = self.blocks.block_table(seq_id)[:width]
            tables.append(table + [scratch] * (width - len(table)))
        return torch.tensor(tables, dtype=torch.long, device=self.device)
