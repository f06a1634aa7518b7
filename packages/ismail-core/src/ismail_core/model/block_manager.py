"""Paged KV-cache bookkeeping: fixed-size blocks, per-sequence block tables, automatic prefix
caching. The cache tensors are `cache.PagedCache`; `runner.ModelRunner` ties both to the model.

A sequence's cache is a list of block ids (its block table); position p lives in block
table[p // block_size] at offset p % block_size. A full block is keyed by a hash of (its
parent block's key, its token ids), so a key names a whole prefix; with prefix caching on, a
new sequence reuses the blocks of its longest cached prefix and only the rest is prefilled.
A block becomes findable only once the caller `commit`s that its positions are computed, so a
sequence never reuses a block another one has not written yet.
Blocks no sequence references keep their contents and stay findable by key until they are
needed for something else, least recently used first (vLLM's automatic prefix caching;
nano-vllm's block manager is the compact reference).

Every block is in exactly one of three states:
  used       referenced by one or more block tables (ref_count > 0)
  cached     unreferenced, holding a full block's contents under its key (evictable, LRU)
  free       unreferenced and empty
Preempting a sequence is freeing it: its full blocks stay cached, so recomputing it later
mostly hits them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field


class BlocksExhausted(RuntimeError):
    """No free or evictable block is left (the caller preempts a sequence and retries)."""


@dataclass
class Block:
    """One block of `block_size` cache positions."""

    id: int
    ref_count: int = 0
    key: int | None = None  # set once the block is full and registered for reuse
    tokens: tuple[int, ...] = ()  # the token ids of a keyed block (checked on every hit)


@dataclass
class _Table:
    """A sequence's blocks, the token ids of its positions, how many of its leading blocks
    are keyed (reused or committed) and the key of the last of them."""

    blocks: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    n_keyed: int = 0
    last_key: int | None = None


def block_key(parent: int | None, tokens: Sequence[int]) -> int:
    """The key of a full block: a hash of its parent's key and its token ids (Python hashes
    tuples of ints the same way in every process)."""
    return hash((parent, tuple(tokens)))


class BlockManager:
    """Allocates cache blocks to sequences; see the module docstring."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(
                f"num_blocks ({num_blocks}) and block_size ({block_size}) must be positive"
            )
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() gives block 0 first
        self._cached: OrderedDict[int, None] = OrderedDict()  # evictable, oldest first
        self._by_key: dict[int, int] = {}
        self._tables: dict[object, _Table] = {}
        self.prefix_queries = 0  # prompt tokens looked up (vLLM counts tokens too)
        self.prefix_hits = 0  # of those, found in the cache

    # ------------------------------------------------------------------ queries
    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now: free ones and evictable cached ones."""
        return len(self._free) + len(self._cached)

    @property
    def usage(self) -> float:
        """Share of the blocks that sequences hold."""
        return 1 - self.num_free / len(self.blocks)

    def block_table(self, seq_id: object) -> list[int]:
        """The block ids of a sequence, in position order."""
        return list(self._tables[seq_id].blocks)

    def num_cached_tokens(self, seq_id: object) -> int:
        """Positions of the sequence whose cache entries are (or will be) written."""
        return len(self._tables[seq_id].tokens)

    # ------------------------------------------------------------------ admission
    def can_allocate(self, token_ids: Sequence[int], reuse: bool = True) -> bool:
        """Whether a sequence with these tokens can be admitted now."""
        hits = self._prefix_blocks(token_ids) if reuse else []
        reused_cached = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        needed = self._blocks_for(len(token_ids)) - len(hits)
        return needed <= self.num_free - reused_cached

    def allocate(self, seq_id: object, token_ids: Sequence[int], reuse: bool = True) -> int:
        """Give a new sequence the blocks for its tokens; returns the number of leading
        positions already in the cache (a multiple of block_size, below len(token_ids): the
        last token is always computed, for its logits). reuse=False takes no cached blocks
        (a caller that needs every position's logits). Raises BlocksExhausted (changing
        nothing) when can_allocate is false."""
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id!r} already has blocks")
        if not token_ids:
            raise ValueError("a sequence needs at least one token")
        if not self.can_allocate(token_ids, reuse):
            raise BlocksExhausted(f"no room for a {len(token_ids)}-token sequence")
        hits = self._prefix_blocks(token_ids) if reuse else []
        self.prefix_queries += len(token_ids)
        self.prefix_hits += len(hits) * self.block_size
        table = _Table(tokens=list(token_ids), n_keyed=len(hits))
        self._tables[seq_id] = table
        for block_id in hits:
            self._take(block_id)
            table.blocks.append(block_id)
            table.last_key = self.blocks[block_id].key
        while len(table.blocks) < self._blocks_for(len(token_ids)):
            table.blocks.append(self._new_block())
        return len(hits) * self.block_size

    # ------------------------------------------------------------------ decoding
    def can_append(self, seq_id: object) -> bool:
        """Whether one more token fits (a new block is needed at a block boundary)."""
        table = self._tables[seq_id]
        return len(table.tokens) % self.block_size != 0 or self.num_free > 0

    def append(self, seq_id: object, token_id: int) -> None:
        """Give the sequence one more position (for token_id); raises BlocksExhausted
        (changing nothing) when a new block is needed and none is left."""
        table = self._tables[seq_id]
        if not self.can_append(seq_id):
            raise BlocksExhausted(f"no block left for sequence {seq_id!r}")
        if len(table.tokens) % self.block_size == 0:
            table.blocks.append(self._new_block())
        table.tokens.append(token_id)

    def commit(self, seq_id: object, num_computed: int) -> None:
        """Record that the sequence's first num_computed positions are written in the cache:
        its full blocks among them become findable by later sequences."""
        table = self._tables[seq_id]
        size = self.block_size
        while table.n_keyed < min(num_computed, len(table.tokens)) // size:
            i = table.n_keyed
            tokens = tuple(table.tokens[i * size : (i + 1) * size])
            table.last_key = block_key(table.last_key, tokens)
            if self.enable_prefix_caching:
                self._register(table.blocks[i], table.last_key, tokens)
            table.n_keyed += 1

    def free(self, seq_id: object) -> None:
        """Release a finished or preempted sequence's blocks (last block first, so a prefix's
        earlier blocks outlive its later ones under LRU eviction)."""
        table = self._tables.pop(seq_id)
        for block_id in reversed(table.blocks):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.key is not None:
                    self._cached[block_id] = None
                else:
                    self._free.append(block_id)

    # ------------------------------------------------------------------ internals
    def _blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def _prefix_blocks(self, token_ids: Sequence[int]) -> list[int]:
        """Ids of the cached blocks holding the longest cached prefix of full blocks, short of
        the last token (which is computed again for its logits)."""
        if not self.enable_prefix_caching:
            return []
        found, parent, size = [], None, self.block_size
        for start in range(0, len(token_ids) - size, size):
            tokens = tuple(token_ids[start : start + size])
            parent = block_key(parent, tokens)
            block_id = self._by_key.get(parent)
            if block_id is None or self.blocks[block_id].tokens != tokens:
                break
            found.append(block_id)
        return found

    def _register(self, block_id: int, key: int, tokens: tuple[int, ...]) -> None:
        """Make a full block findable by key, unless another block already holds that prefix."""
        if key in self._by_key:
            return
        block = self.blocks[block_id]
        block.key, block.tokens = key, tokens
        self._by_key[key] = block_id

    def _new_block(self) -> int:
        """A free block, or else the least recently used cached one (its key forgotten)."""
        if self._free:
            block_id = self._free.pop()
        else:
            block_id, _ = self._cached.popitem(last=False)
            block = self.blocks[block_id]
            assert block.key is not None, "a cached block has a key"
            del self._by_key[block.key]
            block.key, block.tokens = None, ()
        self.blocks[block_id].ref_count = 1
        return block_id

    def _take(self, block_id: int) -> None:
        """Reference a cached or used block for one more sequence."""
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._cached[block_id]
        block.ref_count += 1

    def check(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (for tests)."""
        used = {b.id for b in self.blocks if b.ref_count > 0}
        cached, free = set(self._cached), set(self._free)
        assert len(free) == len(self._free), "a block is free twice"
        assert not (used & cached or used & free or cached & free), "a block in two states"
        assert used | cached | free == set(range(len(self.blocks))), "a block was lost"
        refs = [0] * len(self.blocks)
        for table in self._tables.values():
            assert len(table.blocks) == self._blocks_for(len(table.tokens))
            for block_id in table.blocks:
                refs[block_id] += 1
        assert refs == [b.ref_count for b in self.blocks], "reference counts are off"
        for key, block_id in self._by_key.items():
            assert self.blocks[block_id].key == key
        assert all(self.blocks[b].key is not None for b in cached), "an unkeyed cached block"
