"""Two small Turkish lm-eval tasks that run offline from local files, and a reader of per-document
log-likelihoods from lm-eval's logged samples.

`write_tasks(directory)` writes the task YAML and JSONL files and returns the task names; pass
the directory as lm-eval's include path (`--include_path` / `ismail eval --include-path`).
Other test folders import this file after putting its folder on sys.path (see
tests/test_serve_http.py for the pattern).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MC_TASK = "ismail_tr_mc"
GEN_TASK = "ismail_tr_gen"

# question, choices, index of the right choice
MC_ITEMS = [
    ("Türkiye'nin başkenti neresidir?", ["Ankara", "İstanbul", "İzmir", "Bursa"], 0),
    ("Bir yılda kaç ay vardır?", ["on iki", "on", "sekiz", "yirmi"], 0),
    ("Açık havada gökyüzü hangi renktir?", ["mavi", "yeşil", "kırmızı", "mor"], 0),
    ("Su deniz seviyesinde kaç derecede kaynar?", ["yüz", "elli", "sıfır", "otuz"], 0),
    ("Haftanın ilk iş günü hangisidir?", ["pazartesi", "cuma", "pazar", "çarşamba"], 0),
    ("Kedi nasıl ses çıkarır?", ["miyavlar", "havlar", "böğürür", "öter"], 0),
    ("Kitapları nerede okuruz?", ["kütüphanede", "denizde", "fırında", "bahçelerden"], 0),
    ("Türkçede kaç ünlü harf vardır?", ["sekiz", "beş", "on", "altı"], 0),
]

# question, answer
GEN_ITEMS = [
    ("Türkiye'nin başkenti neresidir?", "Ankara"),
    ("Bir haftada kaç gün vardır?", "yedi"),
    ("Karların rengi nedir?", "beyaz"),
    ("Atatürk hangi şehirde doğdu?", "Selanik"),
]

_PROMPT = "Soru: {{question}}\nCevap:"
_METADATA = {"version": 1.0}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _local_dataset(data: Path, cache: Path) -> dict[str, Any]:
    """lm-eval dataset fields for a local JSONL file: `datasets`' json builder, no hub access;
    its Arrow cache stays inside the task folder."""
    return {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(cache)},
        "test_split": "test",
    }


def write_tasks(directory: str | Path) -> list[str]:
    """Write a multiple-choice task (metric acc) and a generation task (metric exact_match)
    into `directory`; returns their names."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cache = directory / "datasets-cache"
    mc_data, gen_data = directory / "tr_mc.jsonl", directory / "tr_gen.jsonl"
    _write_jsonl(mc_data, [{"question": q, "choices": c, "answer": a} for q, c, a in MC_ITEMS])
    _write_jsonl(gen_data, [{"question": q, "answer": a} for q, a in GEN_ITEMS])
    mc = {
        "task": MC_TASK,
        **_local_dataset(mc_data, cache),
        "output_type": "multiple_choice",
        "doc_to_text": _PROMPT,
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": _METADATA,
    }
    gen = {
        "task": GEN_TASK,
        **_local_dataset(gen_data, cache),
        "output_type": "generate_until",
        "doc_to_text": _PROMPT,
        "doc_to_target": " {{answer}}",
        "generation_kwargs": {"until": ["\n", "."], "max_gen_toks": 8, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": _METADATA,
    }
    # JSON is YAML, and needs no YAML writer here
    (directory / f"{MC_TASK}.yaml").write_text(json.dumps(mc, ensure_ascii=False, indent=1))
    (directory / f"{GEN_TASK}.yaml").write_text(json.dumps(gen, ensure_ascii=False, indent=1))
    return [MC_TASK, GEN_TASK]


def loglikelihoods_by_doc(samples: list[dict[str, Any]]) -> dict[int, list[float]]:
    """doc_id -> the log-likelihood of each request of that document (each choice, for a
    multiple-choice task), from one task's logged samples: `results["samples"][task]` of
    `simple_evaluate(..., log_samples=True)`, or the lines of lm-eval's samples_*.jsonl."""
    return {
        int(sample["doc_id"]): [float(resp[0][0]) for resp in sample["resps"]] for sample in samples
    }
