"""Another language from scratch: a Cyrillic Tatar corpus in the Leipzig format -> a byte-level
BPE trained on it -> a tiny model -> generation -> a Hugging Face export that transformers
loads with AutoTokenizer and AutoModelForCausalLM alone (no ismail code, no remote code)."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from ismail_core.cli import main

transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))  # test_e2e_train's tiny model flags
from test_e2e_train import TINY, flags  # noqa: E402

CORPUS_NAME = "tat_news_2019_10K"
# Tatar words and suffixes (plural, case, possessive, tense): enough morphology that BPE has
# frequent character sequences to merge, and the whole Tatar Cyrillic alphabet (ә ө ү җ ң һ).
NOUNS = ["китап", "мәктәп", "бала", "татар", "тел", "өй", "су", "җир", "шәһәр", "укытучы", "авыл"]
NOUN_SUFFIXES = ["", "лар", "ләр", "ның", "гә", "да", "дән", "ым", "ебез"]
VERBS = ["укый", "яза", "сөйли", "күрә", "ярата", "эшли", "белә", "тыңлый"]
VERB_SUFFIXES = ["", "лар", "м", "быз", "чак", "ды"]
ADJECTIVES = ["яңа", "зур", "матур", "кечкенә", "иске", "җылы", "туган", "һәр"]
PROMPT = "Бала яңа китап"


def _sentence(rng: random.Random) -> str:
    """One Tatar-like sentence: adjective-noun pairs, then a verb (32+ characters, the
    shortest document `ismail data` keeps by default)."""
    words = []
    for _ in range(rng.randint(3, 5)):
        words += [rng.choice(ADJECTIVES), rng.choice(NOUNS) + rng.choice(NOUN_SUFFIXES)]
    words.append(rng.choice(VERBS) + rng.choice(VERB_SUFFIXES))
    return " ".join(words).capitalize() + rng.choice([".", ".", "!", "?"])


def _leipzig_archive(directory: Path, sentences: list[str]) -> Path:
    """A Leipzig Wortschatz-style NAME.tar.gz: NAME/NAME-sentences.txt (id<TAB>sentence) and
    NAME/NAME-words.txt, a word list the reader must not take for text."""
    folder = directory / CORPUS_NAME
    folder.mkdir(parents=True)
    lines = (f"{i}\t{s}\n" for i, s in enumerate(sentences, start=1))
    (folder / f"{CORPUS_NAME}-sentences.txt").write_text("".join(lines), encoding="utf-8")
    words = (f"{i}\t{w}\t{100 - i}\n" for i, w in enumerate(NOUNS + VERBS, start=1))
    (folder / f"{CORPUS_NAME}-words.txt").write_text("".join(words), encoding="utf-8")
    archive = directory / f"{CORPUS_NAME}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=CORPUS_NAME)
    return archive


def _ismail(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """Run an `ismail` command in this process; its standard output."""
    assert main(list(argv)) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_tatar_from_scratch_bpe_train_generate_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    rng = random.Random(0)
    sentences = sorted({_sentence(rng) for _ in range(500)})
    archive = _leipzig_archive(tmp_path / "corpus", sentences)
    data, run, export = tmp_path / "data", tmp_path / "run", tmp_path / "hf"

    out = _ismail(
        capsys, "data", str(archive), "--out", str(data), "--train-tokenizer",
        "--tokenizer-type", "bpe", "--vocab-size", "400", "--num-proc", "1",
    )  # fmt: skip
    meta = json.loads((data / "meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "hf" and meta["tokenizer"]["vocab_size"] == 400
    assert "hf tokenizer" in out and "400 tokens" in out
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert train["documents"] + val["documents"] == len(sentences)
    # BPE merged Tatar character sequences: well under one token per (two-byte) letter.
    assert train["bytes"] / train["tokens"] > 3

    # A model past its first steps: greedy choices are clear, not near-ties of a flat one.
    steps = {"train.steps": 20, "eval.interval": 10, "checkpoint.interval": 20}
    _ismail(capsys, "train", "--data.path", str(data), "--run.out_dir", str(run),
            *flags({**TINY, **steps}))  # fmt: skip
    # Greedy (other options at their defaults): what model.generate(do_sample=False) does with
    # the sampling defaults the export writes into generation_config.json.
    greedy = ["--temperature", "0", "--max-new-tokens", "12", "--no-stream"]
    generated = _ismail(capsys, "generate", str(run), "--prompt", PROMPT, *greedy)
    assert generated.startswith(PROMPT) and len(generated.strip()) > len(PROMPT)
    _ismail(capsys, "export", str(run), str(export), "--format", "hf")

    from ismail_core.checkpoint import load_model
    from ismail_core.generate import generate_ids, prompt_ids
    from ismail_core.sampling import GENERATE_DEFAULTS

    model, tokenizer = load_model(run)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    for text in [PROMPT, "Татар телендә сөйләшәбез: әни, өй, җир, һәр көн!", "Kazan 2019"]:
        ids = tokenizer.encode(text).ids
        assert hf_tokenizer.encode(text, add_special_tokens=False) == ids
        assert hf_tokenizer.decode(ids) == text
    assert hf_tokenizer.eos_token_id == tokenizer.eos_id

    ids = prompt_ids(tokenizer, PROMPT)  # the document separator (eos), then the prompt
    params = dataclasses.replace(GENERATE_DEFAULTS, temperature=0)
    ours = list(generate_ids(model, ids, 12, params, tokenizer.eos_id))
    inputs = hf_tokenizer(PROMPT, return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == ids
    with torch.no_grad():
        theirs = hf_model.generate(**inputs, do_sample=False, max_new_tokens=12)
    assert theirs[0, len(ids) :].tolist() == ours
    shown = tokenizer.decode([i for i in ours if i != tokenizer.eos_id])
    assert generated.strip() == (PROMPT + shown).strip()
