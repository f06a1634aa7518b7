"""Fine-tuning data formats: Alpaca, chat, ShareGPT, prompt/completion, hf: datasets, errors."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.finetune.formats import (
    Conversation,
    FinetuneDataError,
    load_conversations,
)

CHAT = {
    "messages": [{"role": "user", "content": "Merhaba"}, {"role": "assistant", "content": "Selam"}]
}
USER_REPLY = [{"role": "user", "content": "Merhaba"}, {"role": "assistant", "content": "Selam"}]


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    return path


def _json_list(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2))
    return path


def _messages(spec: str | Path) -> list[list[dict[str, str]]]:
    return [c.as_messages() for c in load_conversations(str(spec))]


# --- each format -------------------------------------------------------------------------------


@pytest.mark.parametrize("write", [_jsonl, _json_list], ids=["jsonl", "json-list"])
def test_alpaca(tmp_path: Path, write) -> None:
    records = [
        {"instruction": "Çevir", "input": "hello", "output": "merhaba"},
        {"instruction": "Bir şiir yaz", "input": "", "output": "Dağlar..."},
        {"instruction": "Özetle", "output": "Kısa."},  # no input at all
        {"instruction": "Say hi", "input": None, "output": "hi", "system": "Be brief."},
    ]
    path = write(tmp_path / ("data.jsonl" if write is _jsonl else "data.json"), records)
    assert _messages(path) == [
        [
            {"role": "user", "content": "Çevir\n\nhello"},
            {"role": "assistant", "content": "merhaba"},
        ],
        [
            {"role": "user", "content": "Bir şiir yaz"},
            {"role": "assistant", "content": "Dağlar..."},
        ],
        [{"role": "user", "content": "Özetle"}, {"role": "assistant", "content": "Kısa."}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi"},
            {"role": "assistant", "content": "hi"},
        ],
    ]


def test_chat_jsonl_maps_developer_to_system_and_skips_blank_lines(tmp_path: Path) -> None:
    dev = {"role": "developer", "content": "Türkçe cevap ver."}
    path = tmp_path / "chat.jsonl"
    path.write_text(
        json.dumps(CHAT) + "\n\n   \n" + json.dumps({"messages": [dev, *USER_REPLY]}) + "\n"
    )
    conversations = load_conversations(str(path))
    assert [c.as_messages() for c in conversations] == [
        USER_REPLY,
        [{"role": "system", "content": "Türkçe cevap ver."}, *USER_REPLY],
    ]
    # sources count blank lines, so they point at the file's real lines
    assert [c.source for c in conversations] == [f"{path}:1", f"{path}:4"]


def test_chat_json_list_sources_are_the_lines_records_start_on(tmp_path: Path) -> None:
    path = _json_list(tmp_path / "chat.json", [CHAT, CHAT])
    lines = path.read_text().split("\n")
    starts = [i + 1 for i, line in enumerate(lines) if line in ("  {", "[{")]
    assert [c.source for c in load_conversations(str(path))] == [f"{path}:{n}" for n in starts]


def test_sharegpt_roles(tmp_path: Path) -> None:
    records = [
        {
            "conversations": [
                {"from": "system", "value": "Sen yardımcısın."},
                {"from": "human", "value": "Soru 1"},
                {"from": "gpt", "value": "Cevap 1"},
                {"from": "user", "value": "Soru 2"},
                {"from": "assistant", "value": "Cevap 2"},
            ]
        },
        {
            "system": "Kısa yaz.",
            "conversations": [{"from": "human", "value": "S"}, {"from": "gpt", "value": "C"}],
        },
    ]
    assert _messages(_jsonl(tmp_path / "sg.jsonl", records)) == [
        [
            {"role": "system", "content": "Sen yardımcısın."},
            {"role": "user", "content": "Soru 1"},
            {"role": "assistant", "content": "Cevap 1"},
            {"role": "user", "content": "Soru 2"},
            {"role": "assistant", "content": "Cevap 2"},
        ],
        [
            {"role": "system", "content": "Kısa yaz."},
            {"role": "user", "content": "S"},
            {"role": "assistant", "content": "C"},
        ],
    ]


def test_prompt_completion(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2=", "completion": " 4"}])
    assert _messages(path) == [
        [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": " 4"}]
    ]


@pytest.mark.parametrize("write", [_jsonl, _json_list], ids=["jsonl", "json-list"])
def test_mixed_formats_in_one_file(tmp_path: Path, write) -> None:
    records = [
        CHAT,
        {
            "conversations": [
                {"from": "human", "value": "Merhaba"},
                {"from": "gpt", "value": "Selam"},
            ]
        },
        {"instruction": "Merhaba", "output": "Selam"},
        {"prompt": "Merhaba", "completion": "Selam", "id": 7},  # extra keys are ignored
    ]
    path = write(tmp_path / "mixed.data", records)  # the suffix does not matter
    conversations = load_conversations(str(path))
    assert [c.as_messages() for c in conversations] == [USER_REPLY] * 4
    assert len(set(conversations)) == 1  # equal and hashable alike, whatever the source


def test_folder_of_files_in_name_order(tmp_path: Path) -> None:
    _jsonl(tmp_path / "b.jsonl", [{"prompt": "b", "completion": "B"}])
    _json_list(tmp_path / "a.json", [{"prompt": "a", "completion": "A"}])
    (tmp_path / "notes.txt").write_text("not data")
    assert [c.messages for c in load_conversations(str(tmp_path))] == [
        (("user", "a"), ("assistant", "A")),
        (("user", "b"), ("assistant", "B")),
    ]


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(CHAT).encode())
    assert _messages(path) == [USER_REPLY]


def test_conversation_as_messages() -> None:
    conv = Conversation((("system", "s"), ("user", "u"), ("assistant", "a")), "x.jsonl:1")
    assert conv.as_messages() == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]
    assert conv == Conversation(conv.messages, "elsewhere")


# --- hf: ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("offline")
def test_hf_local_folder_with_splits(tmp_path: Path) -> None:
    folder = tmp_path / "hub-like"
    folder.mkdir()
    _jsonl(
        folder / "train.jsonl",
        [CHAT, {"messages": [{"role": "system", "content": "S"}, *USER_REPLY]}],
    )
    _jsonl(folder / "test.jsonl", [CHAT])
    cache = str(tmp_path / "cache")

    train = load_conversations(f"hf:{folder}", cache_dir=cache)
    assert [c.as_messages() for c in train] == [
        USER_REPLY,
        [{"role": "system", "content": "S"}, *USER_REPLY],
    ]
    assert [c.source for c in train] == [f"hf:{folder}:train[0]", f"hf:{folder}:train[1]"]
    assert load_conversations(f"hf:{folder}:test", cache_dir=cache) == [train[0]]
    with pytest.raises(FinetuneDataError, match=r"split 'nope'|Unknown split"):
        load_conversations(f"hf:{folder}:nope", cache_dir=cache)


@pytest.mark.usefixtures("offline")
def test_hf_rows_of_mixed_formats(tmp_path: Path) -> None:
    # datasets gives each row every column of the file, None where the record lacked it
    folder = tmp_path / "mixed"
    folder.mkdir()
    _jsonl(
        folder / "train.jsonl",
        [
            CHAT,
            {"instruction": "Merhaba", "output": "Selam"},
            {"prompt": "Merhaba", "completion": "Selam"},
        ],
    )
    conversations = load_conversations(f"hf:{folder}", cache_dir=str(tmp_path / "cache"))
    assert [c.as_messages() for c in conversations] == [USER_REPLY] * 3


@pytest.mark.usefixtures("offline")
def test_hf_errors_name_the_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", [CHAT, {"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(
        FinetuneDataError, match=rf"^{re.escape(f'hf:{folder}:train[1]')}: .*no assistant"
    ):
        load_conversations(f"hf:{folder}", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FinetuneDataError, match="no dataset name"):
        load_conversations("hf:")
    with pytest.raises(FinetuneDataError, match=r"^hf:.*nowhere:train: cannot load the dataset"):
        load_conversations(f"hf:{tmp_path / 'nowhere'}", cache_dir=str(tmp_path / "cache"))


# --- errors ------------------------------------------------------------------------------------


def _line(record) -> str:
    return record if isinstance(record, str) else json.dumps(record)


def _msgs(*turns: tuple[str, object]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


# (case, the bad record (a raw line when a str), what the message must say)
BAD_RECORDS = [
    ("malformed-json", '{"prompt": "a", "completion": }', "malformed JSON"),
    ("not-an-object", '"just text"', "is a string, not an object"),
    ("not-an-object-number", "3", "is a number, not an object"),
    ("not-an-object-list", "[1, 2]", "is a list, not an object"),
    ("alpaca-missing-output", {"instruction": "x", "input": "y"}, "missing 'output'"),
    ("prompt-missing-completion", {"prompt": "x", "response": "y"}, "missing 'completion'"),
    ("no-format", {"text": "x"}, "no accepted format matches the keys ['text']"),
    ("messages-not-list", {"messages": "hi"}, '"messages" is a string; make it a list'),
    ("message-not-object", {"messages": ["hi"]}, "messages[0] is a string"),
    ("message-missing-content", {"messages": [{"role": "user"}]}, "lacks 'content'"),
    ("unknown-role", _msgs(("user", "x"), ("tool", "y")), "unknown \"role\" 'tool'; use one of"),
    (
        "unknown-sharegpt-from",
        {"conversations": [{"from": "bing", "value": "x"}]},
        "unknown \"from\" 'bing'; use one of system, human, user, gpt, assistant",
    ),
    (
        "content-not-string",
        _msgs(("user", ["x"]), ("assistant", "y")),
        "is a list; make it a string",
    ),
    ("content-null", _msgs(("user", "x"), ("assistant", None)), "is null; make it a string"),
    ("output-not-string", {"instruction": "x", "output": 3}, '"output" is a number'),
    ("empty-assistant", _msgs(("user", "x"), ("assistant", " \n")), "empty assistant turn"),
    ("empty-completion", {"prompt": "x", "completion": ""}, '"completion" is an empty assistant'),
    ("no-assistant", _msgs(("system", "s"), ("user", "x")), "no assistant turn"),
    ("empty-messages", {"messages": []}, "no assistant turn"),
    ("starts-with-assistant", _msgs(("assistant", "a"), ("user", "x")), "starts with an assistant"),
]


@pytest.mark.parametrize(
    ("record", "says"), [c[1:] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS]
)
def test_bad_record_in_jsonl_names_file_and_line(tmp_path: Path, record, says: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(f"{json.dumps(CHAT)}\n\n{_line(record)}\n{json.dumps(CHAT)}\n")
    with pytest.raises(FinetuneDataError) as info:
        load_conversations(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:3: ")
    assert says in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("record", "says"),
    [c[1:] for c in BAD_RECORDS if c[0] != "malformed-json"],
    ids=[c[0] for c in BAD_RECORDS if c[0] != "malformed-json"],
)
def test_bad_record_in_json_list_names_file_and_line(tmp_path: Path, record, says: str) -> None:
    path = tmp_path / "train.json"
    path.write_text(f"[\n{json.dumps(CHAT)},\n\n  {_line(record)}\n]\n")
    with pytest.raises(FinetuneDataError) as info:
        load_conversations(str(path))
    assert str(info.value).startswith(f"{path}:4: ")
    assert says in str(info.value)


def test_missing_fields_lists_formats_and_found_keys(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [{"question": "x", "answer": "y"}])
    with pytest.raises(FinetuneDataError) as info:
        load_conversations(str(path))
    message = str(info.value)
    assert f"{path}:1: " in message
    assert "['answer', 'question']" in message
    for fmt in ("chat", "ShareGPT", "Alpaca", "prompt/completion", '"instruction"', '"messages"'):
        assert fmt in message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('[\n  {"prompt": "a", "completion": "b"},\n]', 3),  # trailing comma
        ('[\n  {"prompt": "a", "completion": "b"}\n  {"prompt": "c"}\n]', 3),  # no comma
        ('[\n  {"prompt": "a", "completion": "b"}', 2),  # unclosed
        ('[{"prompt": "a", "completion": "b"}]\n\n[]', 3),  # data after the list
        ('{\n  "prompt": "a",\n  "completion": "b"\n}', 1),  # one pretty-printed object
    ],
    ids=["trailing-comma", "missing-comma", "unclosed", "extra-data", "pretty-object"],
)
def test_malformed_json_file_names_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "data.json"
    path.write_text(text)
    with pytest.raises(FinetuneDataError, match="malformed JSON") as info:
        load_conversations(str(path))
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert "JSON list" in str(info.value)


@pytest.mark.parametrize(
    "text", ["", "\n \n\n", "[]", " [ ]\n"], ids=["empty", "blank", "[]", "[ ]"]
)
def test_empty_dataset(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(text)
    with pytest.raises(
        FinetuneDataError, match=rf"^{re.escape(str(path))}: holds no records; .*Alpaca"
    ):
        load_conversations(str(path))


def test_folder_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(
        FinetuneDataError, match=rf"^{re.escape(str(tmp_path))}: the folder holds no"
    ):
        load_conversations(str(tmp_path))


def test_missing_path_lists_the_accepted_specs(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(FinetuneDataError) as info:
        load_conversations(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: the path does not exist")
    assert ".jsonl" in message and "hf:NAME[:SPLIT]" in message


def test_non_utf8_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(CHAT).encode() + b'\n{"prompt": "\xfe", "completion": "x"}\n')
    with pytest.raises(FinetuneDataError, match=rf"^{re.escape(str(path))}:2: not UTF-8 text"):
        load_conversations(str(path))


# --- property: the same conversations through every encoding ---------------------------------

_content = st.text(max_size=30)
_reply = st.text(min_size=1, max_size=30).filter(str.strip)
_opening = st.tuples(st.sampled_from(["system", "user"]), _content)
_turn = st.one_of(_opening, st.tuples(st.just("assistant"), _reply))
_conversation = st.builds(
    lambda first, middle, last: (first, *middle, last),
    _opening,
    st.lists(_turn, max_size=4),
    st.tuples(st.just("assistant"), _reply),
)
_SHAREGPT_FROM = {
    "system": ["system"],
    "user": ["human", "user"],
    "assistant": ["gpt", "assistant"],
}


@settings(max_examples=50, deadline=None)
@given(conversations=st.lists(_conversation, min_size=1, max_size=5), data=st.data())
def test_messages_and_sharegpt_encodings_load_back_the_same(conversations, data) -> None:
    expected = [Conversation(tuple(turns), "expected") for turns in conversations]
    chat = [{"messages": [{"role": r, "content": c} for r, c in turns]} for turns in conversations]
    sharegpt = [
        {
            "conversations": [
                {"from": data.draw(st.sampled_from(_SHAREGPT_FROM[r])), "value": c}
                for r, c in turns
            ]
        }
        for turns in conversations
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for path in (
            _jsonl(root / "chat.jsonl", chat),
            _json_list(root / "chat.json", chat),
            _jsonl(root / "sharegpt.jsonl", sharegpt),
        ):
            assert load_conversations(str(path)) == expected
