"""Deterministic train/validation split by content hash.

A document's split depends only on its text, so it is the same whatever the input order, the
number of processes, or which other documents are present (adding data never moves a
validation document into training).
"""

from __future__ import annotations

_BUCKETS = 1_000_000


def _bucket(digest: str) -> int:
    """The document's bucket in [0, _BUCKETS), from its sha256 hex digest."""
    return int(digest[:12], 16) % _BUCKETS


def is_validation(digest: str, val_fraction: float) -> bool:
    """Whether the document with this sha256 hex digest belongs to the validation split."""
    return _bucket(digest) < val_fraction * _BUCKETS


def split_flags(digests: list[str], val_fraction: float) -> list[bool]:
    """Validation flags for a corpus; at least one document each way when there are two or more.

    On tiny corpora the hash may put nothing in validation: then the document with the smallest
    bucket is moved there (still a function of the texts only).
    """
    flags = [is_validation(d, val_fraction) for d in digests]
    if val_fraction > 0 and len(digests) >= 2:
        buckets = [_bucket(d) for d in digests]
        if not any(flags):
            flags[min(range(len(digests)), key=buckets.__getitem__)] = True
        if all(flags):
            flags[max(range(len(digests)), key=buckets.__getitem__)] = False
    return flags
