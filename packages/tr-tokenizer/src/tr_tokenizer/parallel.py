"""Batch encoding over worker processes that keep their own warm per-word caches.

Workers are forked once per tokenizer (and worker count) and reused across calls, so the cost of
starting them and of warming their caches is paid once. Python threads would not help: encoding
holds the GIL (the compiled segmenter keeps its per-chunk cache without releasing it).
"""

from __future__ import annotations

import gc
import threading
import weakref
from array import array
from concurrent.futures import ProcessPoolExecutor, wait
from itertools import accumulate, pairwise
from multiprocessing import current_process, get_all_start_methods, get_context
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from tr_tokenizer.tokenizer import Tokenizer

_TOKENIZER: Tokenizer | None = None  # the tokenizer inside a worker process
# (lock, bounds): bounds[2k:2k+2] are the unclaimed pieces [start, end) of block k, shared by
# this process (claiming from the start) and the worker that has block k (from the end)
_CLAIMS = None
PIECES_PER_WORKER = 8  # finer pieces balance better at the end of a batch


def fork_available() -> bool:
    """Whether workers can be forked here: they inherit the tokenizer by fork (Linux, macOS),
    and a daemonic process (e.g. a multiprocessing.Pool worker) may not have children."""
    return "fork" in get_all_start_methods() and not current_process().daemon


def _init_worker(tok: Tokenizer, claims) -> None:
    global _TOKENIZER, _CLAIMS
    _TOKENIZER = tok
    _CLAIMS = claims
    # Objects inherited from the parent are never scanned by this worker's garbage collector,
    # so its collections do not write to (and copy) every inherited page.
    gc.freeze()


def _started(_: int) -> None:
    return None


def _encode_texts(texts: list[str]) -> tuple[array, array]:
    """All ids of a piece as one flat array plus one length per text: a flat array pickles as a
    single memory copy, far cheaper for the parent to receive than a list of lists."""
    assert _TOKENIZER is not None
    ids = array("i")
    lengths = array("i")
    for t in texts:
        encoded = _TOKENIZER.encode_ids(t)
        ids.extend(encoded)
        lengths.append(len(encoded))
    return ids, lengths


def _encode_from_end(block: int, first: int, pieces: list[list[str]]) -> list[tuple]:
    """In a worker: claim the pieces of `block` (numbered from `first`) from its end until none
    is left; returns (piece number, ids, lengths) for each piece it encoded."""
    assert _CLAIMS is not None
    lock, bounds = _CLAIMS
    done: list[tuple] = []
    while True:
        with lock:
            if bounds[2 * block + 1] <= bounds[2 * block]:
                return done
            bounds[2 * block + 1] -= 1
            k = bounds[2 * block + 1]
        done.append((k, *_encode_texts(pieces[k - first])))


class WorkerPool:
    """`workers` encoders for one tokenizer: this process plus workers - 1 forked ones.

    The calling process encodes its own share instead of waiting, so two workers use two cores
    with one fork, and only the other shares' texts and ids cross a pipe.
    """

    def __init__(self, tok: Tokenizer, workers: int) -> None:
        self.tok = tok
        self.workers = workers
        context = get_context("fork")
        self.claims = (context.Lock(), context.RawArray("q", 2 * (workers - 1)))
        self.busy = threading.Lock()  # one batch at a time: the claims are shared
        gc.freeze()  # fork with the parent's objects frozen: fewer copy-on-write pages
        try:
            self.executor = ProcessPoolExecutor(
                workers - 1,
                mp_context=context,
                initializer=_init_worker,
                initargs=(tok, self.claims),
            )
            list(self.executor.map(_started, range(workers - 1)))  # fork every worker now
        finally:
            gc.unfreeze()
        self._close = weakref.finalize(self, self.executor.shutdown, wait=False)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Ids for each text, in order.

        The texts are cut into pieces, grouped in one block per worker: the first block twice
        the size of the others, because this process shares it. Each worker gets its block in
        one task (one trip through the pipes, which this busy process serves slowly) and claims
        its pieces from the end; this process claims pieces from the start of each block in
        turn, under a shared lock. So the split balances itself whatever the relative speeds,
        and every text crosses a pipe at most once.
        """
        others = self.workers - 1
        n_pieces = min(len(texts), PIECES_PER_WORKER * self.workers)
        cuts = [len(texts) * k // n_pieces for k in range(n_pieces + 1)]
        pieces = [texts[cuts[k] : cuts[k + 1]] for k in range(n_pieces)]
        firsts = [0] + [n_pieces * (k + 2) // self.workers for k in range(others)]
        lock, bounds = self.claims
        encode_ids = self.tok.encode_ids
        with self.busy:
            for block in range(others):
                bounds[2 * block], bounds[2 * block + 1] = firsts[block], firsts[block + 1]
            futures = [
                self.executor.submit(
                    _encode_from_end,
                    block,
                    firsts[block],
                    pieces[firsts[block] : firsts[block + 1]],
                )
                for block in range(others)
            ]
            results: list[list[list[int]] | None] = [None] * n_pieces
            try:
                for block in range(others):
                    while True:
                        with lock:
                            if bounds[2 * block] >= bounds[2 * block + 1]:
                                break
                            k = bounds[2 * block]
                            bounds[2 * block] += 1
                        results[k] = [encode_ids(t) for t in pieces[k]]
            except BaseException:
                # interrupted: let the workers finish their current piece and stop, so that no
                # worker of this batch claims pieces of the next one
                with lock:
                    for block in range(others):
                        bounds[2 * block + 1] = bounds[2 * block]
                wait(futures)
                raise
            for future in futures:
                for k, ids, lengths in future.result():
                    flat = ids.tolist()
                    starts = [0, *accumulate(lengths)]
                    results[k] = [flat[a:b] for a, b in pairwise(starts)]
        encoded = cast(list[list[list[int]]], results)  # every piece is filled in by now
        return [ids for piece in encoded for ids in piece]

    def close(self) -> None:
        """Stop the worker processes and wait for them to exit."""
        self._close.detach()
        self.executor.shutdown(wait=True)
