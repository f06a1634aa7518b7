"""The compiled segmenter and the Python code share their facts through one generated header,
and the segmenter is built from its tables by name."""

from __future__ import annotations

import dataclasses
import re

import pytest
import tr_tokenizer
from tr_tokenizer import _native_layout
from tr_tokenizer.encoder import HARMONY_KEYS, native_available
from tr_tokenizer.suffixes import _CONTEXT_CHARS

SOURCE = _native_layout.HEADER.with_name("_native.c")
# the C sources are in the repository and the sdist, not in the wheel
sources = pytest.mark.skipif(not SOURCE.exists(), reason="installed without the C sources")


@sources
def test_generated_header_matches_the_python_definitions() -> None:
    assert _native_layout.HEADER.read_text(encoding="utf-8") == _native_layout.header(), (
        "_native_layout.h is stale: run `uv run python -m tr_tokenizer._native_layout`"
    )


@sources
def test_the_c_source_takes_the_shared_facts_from_the_header() -> None:
    source = SOURCE.read_text(encoding="utf-8")
    assert '#include "_native_layout.h"' in source
    header = _native_layout.header()
    generated = re.findall(r"^#define (\w+)", header, re.MULTILINE)
    generated += re.findall(r"^static const Py_UCS4 (\w+)\[\]", header, re.MULTILINE)
    for name in generated:
        defined = rf"(#define {name}\b|\b{name}(\[\])?\s*=[^=]|enum[^;]*\b{name}\b)"
        assert not re.search(defined, source), f"_native.c defines {name} itself"


def test_harmony_layout_refuses_an_order_the_c_code_cannot_read() -> None:
    layout = {name: value for name, value, _ in _native_layout.harmony_layout(HARMONY_KEYS)}
    assert layout["NUM_CLASSES"] == len(HARMONY_KEYS)
    swapped = (HARMONY_KEYS[0], HARMONY_KEYS[2], HARMONY_KEYS[1], *HARMONY_KEYS[3:])
    with pytest.raises(ValueError, match="HARMONY_KEYS"):
        _native_layout.harmony_layout(swapped)


native = pytest.mark.skipif(not native_available(), reason="the compiled segmenter is not built")


@native
def test_the_built_extension_has_the_current_layout() -> None:
    from tr_tokenizer import _native

    assert _native.NUM_CLASSES == len(HARMONY_KEYS)
    assert _native.MAX_CHARS == _CONTEXT_CHARS


@native
def test_the_segmenter_reads_its_tables_by_name() -> None:
    from tr_tokenizer import _native

    encoder = tr_tokenizer.load()._encoder
    tables = encoder.native_tables()
    word = " kitaplarımızdan"
    expected = _native.Segmenter(tables).encode_chunk(word)
    assert expected == encoder.encode_chunk_python(word)
    # any object with the attributes will do: a table is found by its name, not its place
    shuffled = {f.name: getattr(tables, f.name) for f in reversed(dataclasses.fields(tables))}
    as_object = type("Tables", (), shuffled)
    assert _native.Segmenter(as_object).encode_chunk(word) == expected

    missing = {k: v for k, v in shuffled.items() if k != "raw_scan"}
    with pytest.raises(AttributeError, match="raw_scan"):
        _native.Segmenter(type("Tables", (), missing))
    with pytest.raises(TypeError, match="root_scan must be a dict"):
        _native.Segmenter(dataclasses.replace(tables, root_scan=[]))
    with pytest.raises(ValueError, match="texts has"):
        _native.Segmenter(dataclasses.replace(tables, texts=tables.texts[:-1]))
