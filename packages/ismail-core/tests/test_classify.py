"""Classification pieces: labelled data and its errors, the built-in era set, the metrics,
the classifier model (last-real-token pooling, what trains) and checkpoint round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.checkpoint import is_classifier, load_model, save_checkpoint
from ismail_core.classify.builtin import (
    ERAS,
    MAX_CHARS,
    MIN_CHARS,
    builtin_speeches,
    builtin_split,
    era_of,
    passages,
)
from ismail_core.classify.data import (
    ClassifyError,
    LabelledText,
    check_known_labels,
    collate,
    encode_texts,
    label_names,
    load_labelled,
    split_heldout,
)
from ismail_core.classify.metrics import (
    ClassifyEval,
    accuracy,
    confusion_matrix,
    macro_f1,
    majority_accuracy,
    per_class_f1,
)
from ismail_core.classify.model import (
    ClassifierInfo,
    TransformerClassifier,
    from_language_model,
    select_trainable,
    trained_blocks,
)
from ismail_core.classify.predict import TextClassifier
from ismail_core.config import ModelConfig
from ismail_core.model import Transformer
from ismail_core.tokenizer import load_tokenizer
from ismail_core.train.config import ConfigError


@pytest.fixture(scope="module")
def tok(hf_tokenizer_file):
    return load_tokenizer(hf_tokenizer_file)


@pytest.fixture(scope="module")
def lm(tok, tiny_model_config) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, **tiny_model_config)
    return Transformer(cfg).eval()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- data
def test_csv_and_jsonl_give_the_same_records(tmp_path):
    csv = _write(
        tmp_path / "d.csv", 'metin,etiket\n"Merhaba, dünya",olumlu\nkötü bir gün,olumsuz\n'
    )
    jsonl = _write(
        tmp_path / "d.jsonl",
        '{"metin": "Merhaba, dünya", "etiket": "olumlu"}\n\n'
        '{"metin": "kötü bir gün", "etiket": "olumsuz"}\n',
    )
    a = load_labelled(str(csv), "metin", "etiket")
    b = load_labelled(str(jsonl), "metin", "etiket")
    assert [(r.text, r.label) for r in a] == [(r.text, r.label) for r in b]
    assert [r.source for r in a] == [f"{csv}:2", f"{csv}:3"]
    assert [r.source for r in b] == [f"{jsonl}:1", f"{jsonl}:3"]
    folder = load_labelled(str(tmp_path), "metin", "etiket")  # both files of the folder
    assert len(folder) == 4


def test_integer_labels_become_strings_sorted_by_value(tmp_path):
    data = _write(
        tmp_path / "d.jsonl",
        "\n".join(json.dumps({"text": f"t{i}", "label": n}) for i, n in enumerate([10, 2, 1.0])),
    )
    records = load_labelled(str(data))
    assert [r.label for r in records] == ["10", "2", "1"]
    assert label_names(records) == ["1", "2", "10"]
    assert label_names([LabelledText("x", lab, "") for lab in "cab"]) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"text": "a", "label": 1}\n{"text": "b", "label": "pos"}\n', "jsonl", "mixed types"),
        ('{"text": "a", "label": "x"}\n{"text": "b"}\n', "jsonl", r"d\.jsonl:2: the label"),
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n', "jsonl", "missing"),
        ('{"text": "  ", "label": "x"}\n', "jsonl", r"d\.jsonl:1: the text is empty"),
        ('{"body": "a", "label": "x"}\n', "jsonl", r"no 'text' field \(it has 'body', 'label'\)"),
        ('{"text": "a", "label": ["x"]}\n', "jsonl", "string or a number"),
        ("text,label\nbir,x\niki,\n", "csv", r"d\.csv:3: the label \('label'\) is missing"),
        ("text,label\n,x\n", "csv", r"d\.csv:2: no 'text' field"),
        ("", "jsonl", "holds no records"),
    ],
)
def test_bad_data_is_one_clear_error(tmp_path, content, suffix, message):
    data = _write(tmp_path / f"d.{suffix}", content)
    with pytest.raises(ClassifyError, match=message):
        load_labelled(str(data))


def test_held_out_label_unseen_in_training_is_refused():
    train = [LabelledText("a", "x", "f:1"), LabelledText("b", "y", "f:2")]
    with pytest.raises(ClassifyError, match=r"f:9: label 'z' does not occur in the training"):
        check_known_labels(
            label_names(train), [LabelledText("c", "z", "f:9")], "the training split"
        )


def test_split_is_by_content_and_group():
    records = [LabelledText(f"text {i}", "x", "", group=f"g{i % 5}") for i in range(50)]
    train, held = split_heldout(records, 0.4)
    assert {r.group for r in train}.isdisjoint({r.group for r in held})
    assert (train, held) == split_heldout(records, 0.4)
    same_text = [LabelledText("same", "x", str(i)) for i in range(4)]
    assert len(split_heldout(same_text, 0.5)[0]) in (0, 4)


def test_hf_folder_is_read_through_datasets(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    _write(folder / "train.jsonl", '{"t": "bir", "y": "a"}\n{"t": "iki", "y": "b"}\n')
    records = load_labelled(f"hf:{folder}", "t", "y", cache_dir=str(tmp_path / "cache"))
    assert [(r.text, r.label) for r in records] == [("bir", "a"), ("iki", "b")]
    assert records[0].source.startswith(f"hf:{folder}:train[")


def test_encoding_starts_documents_and_keeps_the_start(tok):
    long = "Yurtta sulh, cihanda sulh! " * 20
    (short, cut) = encode_texts(tok, ["Ne mutlu", long], max_len=16)
    assert short[0] == tok.document_start_id and short[1:] == tok.encode("Ne mutlu").ids
    assert cut == ([tok.document_start_id] + tok.encode(long).ids)[:16]
    ids, last = collate([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and last.tolist() == [2, 0]


# ---------------------------------------------------------------------- the built-in set
@pytest.fixture(scope="module")
def builtin():
    return builtin_split()


def test_builtin_labels_come_from_the_speech_years(builtin):
    train, held = builtin
    labels = [label for label, _, _ in ERAS]
    assert label_names(train) == labels and label_names(held) == labels
    years = {s.id: s.year for s in builtin_speeches()}
    for record in train + held:
        assert years[record.group] is not None and era_of(years[record.group]) == record.label
        assert MIN_CHARS <= len(record.text) <= MAX_CHARS
    assert era_of(1922) == "1906-1922" and era_of(1923) == "1923-1926" and era_of(1939) is None


def test_builtin_holds_out_whole_speeches_deterministically(builtin):
    train, held = builtin
    assert {r.group for r in train}.isdisjoint({r.group for r in held})
    assert 0.15 < len(held) / (len(train) + len(held)) < 0.25
    for label, _, _ in ERAS:  # every era is held out in proportion
        share = sum(r.label == label for r in held) / len(held)
        assert share == pytest.approx(sum(r.label == label for r in train) / len(train), abs=0.08)
    assert builtin_split() == (train, held)


def test_passages_are_whole_sentences_within_the_limits():
    body = "Kısa. " + " ".join(f"Bu cümle {i} numaralı ve biraz uzundur." for i in range(40))
    parts = passages(body, 100, 200)
    assert all(100 <= len(p) <= 200 and p.endswith(".") for p in parts)
    words = " ".join(["kelime"] * 100)  # no sentence end: cut at word boundaries
    assert all(len(p) <= 200 for p in passages(words, 100, 200))


# ---------------------------------------------------------------------- metrics
def test_metrics_match_a_hand_computed_example():
    gold = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    pred = [0, 1, 0, 1, 2, 2, 2, 0, 2, 2]
    m = confusion_matrix(gold, pred, 3)
    assert m.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 4]]
    assert accuracy(m) == pytest.approx(7 / 10)
    # F1 = 2TP / (2TP + FP + FN): class 0: 4/(4+1+1), class 1: 2/(2+1+1), class 2: 8/(8+1+1)
    np.testing.assert_allclose(per_class_f1(m), [4 / 6, 2 / 4, 8 / 10])
    assert macro_f1(m) == pytest.approx((4 / 6 + 2 / 4 + 8 / 10) / 3)
    assert majority_accuracy(m) == pytest.approx(5 / 10)
    # a class that never occurs nor is predicted does not count; one only predicted counts 0
    assert macro_f1(confusion_matrix([0, 0], [0, 0], 3)) == 1.0
    assert macro_f1(confusion_matrix([0, 0], [0, 1], 2)) == pytest.approx((2 / 3 + 0) / 2)


def test_eval_from_log_probs():
    log_probs = np.log(np.array([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]]))
    result = ClassifyEval.from_log_probs(log_probs, [0, 0, 1], ["a", "b"])
    assert result.confusion == [[1, 1], [1, 0]] and result.accuracy == pytest.approx(1 / 3)
    assert result.loss == pytest.approx(-(np.log(0.7) + np.log(0.4) + np.log(0.1)) / 3)
    assert result.to_dict()["labels"] == ["a", "b"] and result.count == 3


# ---------------------------------------------------------------------- the model
@given(st.lists(st.integers(1, 20), min_size=1, max_size=5), st.integers(0, 2**16))
@settings(max_examples=15, deadline=None)
def test_pooling_reads_the_last_real_token_as_if_unpadded(lm, lengths, seed):
    model = from_language_model(lm, ClassifierInfo(["a", "b", "c"])).eval()
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, lm.cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
    ids, last = collate(rows, pad_id=0)
    with torch.no_grad():
        batched = model(ids, last_index=last)
        for row, got in zip(rows, batched):
            alone = model(torch.tensor([row]))[0]
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)


def test_classifier_keeps_the_base_weights_and_drops_the_lm_head(lm):
    model = from_language_model(lm, ClassifierInfo(["a", "b"]))
    state = model.state_dict()
    assert not any(k.startswith("head.") for k in state)
    assert state["score.weight"].shape == (2, lm.cfg.dim)
    for name, tensor in lm.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(state[name], tensor)
    out = model(torch.tensor([[3, 4, 5]]), torch.tensor([1]), return_output=True)
    assert out.logits.shape == (1, 2) and out.loss >= out.lm_loss > 0
    assert len(out.expert_load) == len(lm.moe_layers())


def test_trainable_parameters_by_setting(lm):
    model = from_language_model(lm, ClassifierInfo(["a", "b"]))

    def trainable():
        return {
            n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("layers") else "")
            for n, p in model.named_parameters()
            if p.requires_grad
        }

    select_trainable(model, "head")
    assert trainable() == {"score"}
    select_trainable(model, "last-1")
    assert trainable() == {"score", "norm", "layers.1"}
    select_trainable(model, "all")
    assert "embed" in trainable() and "layers.0" in trainable()
    assert trained_blocks("last-2", 2) == 2
    for bad in ("last-3", "last-0", "some", "last-x"):
        with pytest.raises(ConfigError, match="classify.train must be"):
            trained_blocks(bad, 2)


def test_checkpoint_round_trip_and_prediction(lm, tok, tmp_path):
    torch.manual_seed(1)
    model = from_language_model(lm, ClassifierInfo(["olumlu", "olumsuz"], "metin", "etiket"))
    save_checkpoint(tmp_path / "ckpt", model, tok)
    assert is_classifier(tmp_path / "ckpt") and not is_classifier(tmp_path / "missing")
    info = json.loads((tmp_path / "ckpt" / "classifier.json").read_text())
    assert info == {"labels": ["olumlu", "olumsuz"], "text_field": "metin", "label_field": "etiket"}
    loaded, _ = load_model(tmp_path / "ckpt")
    assert isinstance(loaded, TransformerClassifier) and loaded.labels == ["olumlu", "olumsuz"]
    clf = TextClassifier.load(tmp_path / "ckpt", device="cpu")
    texts = ["Ne mutlu Türküm diyene!", "Hayatta en hakiki mürşit ilimdir.", "Yurtta sulh"]
    predictions = clf.predict(texts, batch_size=2)
    with torch.no_grad():
        for text, prediction in zip(texts, predictions):
            ids = torch.tensor([[tok.document_start_id, *tok.encode(text).ids]])
            probs = torch.softmax(model.eval()(ids)[0], -1)
            assert prediction.scores == pytest.approx(dict(zip(clf.labels, probs.tolist())))
            assert prediction.label == clf.labels[int(probs.argmax())]
            assert sum(prediction.scores.values()) == pytest.approx(1.0)
    with pytest.raises(ClassifyError, match="text 2 is empty"):
        clf.predict(["bir", " "])
