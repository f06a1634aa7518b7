"""Batch encoding over worker processes that keep their own warm per-word caches.

Workers are forked once per tokenizer (and worker count) and reused across calls, so the cost of
starting them and of warming their caches is paid once. Python threads would not help: encoding
is pure Python and holds the GIL.
"""

from __future__ import annotations

import gc
import weakref
from array import array
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import current_process, get_all_start_methods, get_context
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tr_tokenizer.tokenizer import Tokenizer

_TOKENIZER: Tokenizer | None = None  # the tokenizer inside a worker process


def fork_available() -> bool:
    """Whether workers can be forked here: they inherit the tokenizer by fork (Linux, macOS),
    and a daemonic process (e.g. a multiprocessing.Pool worker) may not have children."""
    return "fork" in get_all_start_methods() and not current_process().daemon


def _init_worker(tok: Tokenizer) -> None:
    global _TOKENIZER
    _TOKENIZER = tok
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


class WorkerPool:
    """`workers` encoders for one tokenizer: this process plus workers - 1 forked ones.

    The calling process encodes its own share instead of waiting, so two workers use two cores
    with one fork, and only the other shares' texts and ids cross a pipe.
    """

    def __init__(self, tok: Tokenizer, workers: int) -> None:
        self.tok = tok
        self.workers = workers
        gc.freeze()  # fork with the parent's objects frozen: fewer copy-on-write pages
        try:
            self.executor = ProcessPoolExecutor(
                workers - 1,
                mp_context=get_context("fork"),
                initializer=_init_worker,
                initargs=(tok,),
            )
            list(self.executor.map(_started, range(workers - 1)))  # fork every worker now
        finally:
            gc.unfreeze()
        self._close = weakref.finalize(self, self.executor.shutdown, wait=False)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Ids for each text, in order."""
        # the caller's share is a little smaller: it also unpacks the workers' results
        own = len(texts) // self.workers * 3 // 4
        rest = texts[own:]
        per = max(1, -(-len(rest) // ((self.workers - 1) * 4)))
        futures = [
            self.executor.submit(_encode_texts, rest[i : i + per]) for i in range(0, len(rest), per)
        ]
        out = [self.tok.encode_ids(t) for t in texts[:own]]
        for future in futures:
            ids, lengths = future.result()
            flat = ids.tolist()
            start = 0
            for n in lengths:
                out.append(flat[start : start + n])
                start += n
        return out

    def close(self) -> None:
        """Stop the worker processes and wait for them to exit."""
        self._close.detach()
        self.executor.shutdown(wait=True)
