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
                assert cached % block_size == 0 or cached == len(arg) - 1
                assert 0 <= cached < len(arg)
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


def test_a_shared_prefix_reuses_its_full_blocks():
    manager = BlockManager(num_blocks=8, block_size=4)
    system = list(range(100, 108))  # two full blocks
    assert manager.allocate("a", [*system, 1, 2]) == 0
    assert manager.allocate("b", [*system, 3]) == 8  # both blocks of the prefix reused
    a, b = manager.block_table("a"), manager.block_table("b")
    assert a[:2] == b[:2] and a[2] != b[2]
    assert manager.blocks[a[0]].ref_count == 2
    manager.free("a")
    manager.free("b")
    # unreferenced but cached: a later request with the same prefix still finds them
    assert manager.allocate("c", [*system, 9, 9, 9]) == 8
    assert manager.block_table("c")[:2] == a[:2]
    assert manager.prefix_hits == 4 and manager.prefix_queries == 6


def test_a_fully_cached_prompt_still_computes_its_last_token():
    manager = BlockManager(num_blocks=4, block_size=2)
    manager.allocate("a", [1, 2, 3, 4])
    manager.free("a")
    assert manager.allocate("b", [1, 2, 3, 4]) == 3


def test_a_prefix_match_needs_the_same_tokens_from_the_start():
    manager = BlockManager(num_blocks=8, block_size=2)
    manager.allocate("a", [1, 2, 3, 4, 5])
    assert manager.allocate("b", [9, 9, 3, 4, 5]) == 0  # same second block, other parent
    assert manager.allocate("c", [1, 2, 3, 9, 5]) == 2  # only the first block is shared


def test_without_prefix_caching_nothing_is_reused_and_blocks_free_at_once():
    manager = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=False)
    manager.allocate("a", [1, 2, 3, 4])
    assert manager.allocate("b", [1, 2, 3]) == 0
    manager.free("a")
    manager.free("b")
    assert manager.num_free == 4 and not manager._cached


def test_cached_blocks_are_evicted_least_recently_used_first():
    manager = BlockManager(num_blocks=4, block_size=2)
    manager.allocate("old", [1, 1, 2, 2])
    manager.free("old")
    manager.allocate("new", [3, 3, 4, 4])
    manager.free("new")
    manager.allocate("x", [5, 5, 6, 6])  # needs two blocks: the oldest cached ones go
    assert manager.allocate("again", [3, 3, 4, 4]) == 3  # the newer prefix survived
    manager.free("again")
    manager.free("x")
    assert manager.allocate("gone", [1, 1, 2, 2]) == 0


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
