"""The paged-cache block manager: random admit/append/free/preempt sequences never leak or
double-free a block, and prefix caching reuses exactly the blocks of a shared prefix."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.model.block_manager import BlockManager, BlocksExhausted

# Prompts over a 3-token vocabulary with a shared start, so that prefixes repeat often.
prompts = st.lists(st.integers(0, 2), min_size=1, max_size=14).map(lambda t: [7, 7, 7, *t])
ops = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), prompts),
        st.tuples(st.just("append"), st.integers(0, 2)),
        st.tuples(st.just("free"), st.integers(0, 10)),
        st.tuples(st.just("preempt"), st.integers(0, 10)),
        st.tuples(st.just("commit"), st.integers(0, 10)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, num_blocks=st.integers(1, 12), block_size=st.sampled_from([1, 2, 4]),
       caching=st.booleans())  # fmt: skip
def test_random_operations_never_leak_or_double_free(ops, num_blocks, block_size, caching):
    manager = BlockManager(num_blocks, block_size, enable_prefix_caching=caching)
    live: list[int] = []
    lengths: dict[int, int] = {}
    for n, (op, arg) in enumerate(ops):
        if op == "admit":
            if manager.can_allocate(arg):
                cached = manager.allocate(n, arg)
                assert cached % block_size == 0 and 0 <= cached < len(arg)
                live.append(n)
                lengths[n] = len(arg)
            else:
                before = manager.num_free
                with pytest.raises(BlocksExhausted):
                    manager.allocate(n, arg)
                assert manager.num_free == before  # a refused admission changes nothing
        elif live and op == "append":
            seq = live[arg % len(live)]
            if manager.can_append(seq):
                manager.append(seq, arg)
                lengths[seq] += 1
            else:  # out of blocks mid-decode: preempt the newest sequence, as the engine does
                manager.free(live.pop())
        elif live and op == "commit":  # a forward pass computed some leading positions
            seq = live[arg % len(live)]
            manager.commit(seq, lengths[seq] - arg)
        elif live:  # free (finished) or preempt: both release the blocks
            manager.free(live.pop(arg % len(live)))
        manager.check()
        for seq in live:
            assert manager.num_cached_tokens(seq) == lengths[seq]
    for seq in live:
        manager.free(seq)
    manager.check()
    assert manager.num_free == num_blocks  # free + cached == total
    assert all(b.ref_count == 0 for b in manager.blocks)


def admit_computed(manager: BlockManager, seq, tokens) -> int:
    """Admit a sequence and mark all its positions computed (as a forward pass would)."""
    cached = manager.allocate(seq, tokens)
    manager.commit(seq, len(tokens))
    return cached


def test_a_shared_prefix_reuses_its_full_blocks():
    manager = BlockManager(num_blocks=8, block_size=4)
    system = list(range(100, 108))  # two full blocks
    assert admit_computed(manager, "a", [*system, 1, 2]) == 0
    assert admit_computed(manager, "b", [*system, 3]) == 8  # both blocks of the prefix reused
    a, b = manager.block_table("a"), manager.block_table("b")
    assert a[:2] == b[:2] and a[2] != b[2]
    assert manager.blocks[a[0]].ref_count == 2
    manager.free("a")
    manager.free("b")
    # unreferenced but cached: a later request with the same prefix still finds them
    assert manager.allocate("c", [*system, 9, 9, 9]) == 8
    assert manager.block_table("c")[:2] == a[:2]
    assert manager.prefix_hits == 16 and manager.prefix_queries == 10 + 9 + 11  # tokens


def test_blocks_are_reused_only_once_computed():
    manager = BlockManager(num_blocks=8, block_size=2)
    manager.allocate("a", [1, 2, 3, 4, 5])
    assert manager.allocate("b", [1, 2, 3, 4, 5]) == 0  # nothing written yet
    manager.commit("a", 3)  # the first block is written, the second only half
    assert manager.allocate("c", [1, 2, 3, 4, 5]) == 2


def test_a_fully_cached_prompt_still_computes_its_last_token():
    manager = BlockManager(num_blocks=6, block_size=2)
    admit_computed(manager, "a", [1, 2, 3, 4])
    # the last block is not taken from the cache: a sequence never writes a shared block
    assert manager.allocate("b", [1, 2, 3, 4]) == 2
    assert manager.block_table("b")[1] != manager.block_table("a")[1]


def test_a_prefix_match_needs_the_same_tokens_from_the_start():
    manager = BlockManager(num_blocks=8, block_size=2)
    admit_computed(manager, "a", [1, 2, 3, 4, 5])
    assert manager.allocate("b", [9, 9, 3, 4, 5]) == 0  # same second block, other parent
    assert manager.allocate("c", [1, 2, 3, 9, 5]) == 2  # only the first block is shared


def test_without_prefix_caching_nothing_is_reused_and_blocks_free_at_once():
    manager = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=False)
    admit_computed(manager, "a", [1, 2, 3, 4])
    assert manager.allocate("b", [1, 2, 3]) == 0
    manager.free("a")
    manager.free("b")
    assert manager.num_free == 4 and not manager._cached


def test_reuse_false_takes_no_cached_block():
    manager = BlockManager(num_blocks=6, block_size=2)
    admit_computed(manager, "a", [1, 2, 3, 4, 5])
    assert manager.allocate("b", [1, 2, 3, 4, 5], reuse=False) == 0
    assert not set(manager.block_table("a")) & set(manager.block_table("b"))


def test_cached_blocks_are_evicted_least_recently_used_first():
    manager = BlockManager(num_blocks=6, block_size=2)
    admit_computed(manager, "old", [1, 1, 2, 2, 0])
    manager.free("old")
    admit_computed(manager, "new", [3, 3, 4, 4, 0])
    manager.free("new")
    admit_computed(manager, "x", [5, 5, 6, 6, 0])  # needs three blocks: the oldest cached go
    assert manager.allocate("again", [3, 3, 4, 4, 0]) == 4  # the newer prefix survived
    manager.free("again")
    manager.free("x")
    assert manager.allocate("gone", [1, 1, 2, 2, 0]) == 0


def test_refused_input():
    with pytest.raises(ValueError, match="must be positive"):
        BlockManager(0, 16)
    manager = BlockManager(2, 2)
    with pytest.raises(ValueError, match="at least one token"):
        manager.allocate("a", [])
    manager.allocate("a", [1])
    with pytest.raises(ValueError, match="already has blocks"):
        manager.allocate("a", [1])
    with pytest.raises(BlocksExhausted):
        manager.allocate("b", [1, 2, 3, 4, 5])
