"""The lm-evaluation-harness adapter: scores equal a direct forward pass, generation equals
`generate_text`, and `ismail eval --tasks` runs local tasks offline with clear errors."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from ismail_core.cli import main  # noqa: E402
from ismail_core.generate import generate_ids  # noqa: E402
from ismail_core.harness import IsmailLM, evaluate_tasks  # noqa: E402
from ismail_core.sampling import SamplingParams  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # lm_eval_tasks.py, shared with HTTP tests
from lm_eval_tasks import GEN_TASK, MC_TASK, loglikelihoods_by_doc, write_tasks  # noqa: E402
from tiny_setup import tiny_config  # noqa: E402

# No hub access in any test here (the tasks are local files).
pytestmark = pytest.mark.usefixtures("offline")

CONTEXT = 64  # the test model's max_seq_len
LONG_TEXT = " ".join(
    [
        "Arkadaşlar, bu gece burada sizleri toplamaktan maksadım şudur.",
        "Memleketin yaşadığı vahim anları size söylemeye lüzum görmüyorum.",
        "Türkiye Cumhuriyeti'nin temeli kültürdür; İstanbul'da ve Ankara'da okullar açıldı.",
        "Çocuklar öğretmenlerine çiçek getirdiler, ığdır ve şırnak'tan gelen öğrenciler de vardı.",
        "Yurtta sulh, cihanda sulh! Milletimizin istikbali gençlerin ellerindedir.",
    ]
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny model with the shipped tr-tokenizer (suffix spellings need context)."""
    from ismail_core import Transformer
    from ismail_core.checkpoint import save_checkpoint
    from ismail_core.tokenizer import load_tokenizer

    tok = load_tokenizer("tr")
    torch.manual_seed(0)
    model = Transformer(tiny_config(tok.vocab_size, CONTEXT))
    return save_checkpoint(tmp_path_factory.mktemp("harness") / "tiny", model, tok)


@pytest.fixture(scope="module")
def lm(checkpoint: Path) -> IsmailLM:
    return IsmailLM(checkpoint, device="cpu", batch_size=8)


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


@torch.no_grad()
def _token_logprobs(model: torch.nn.Module, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(ids[t] | ids[:t]) for t >= 1 from one full forward pass, and whether each id is
    the argmax."""
    logprobs = F.log_softmax(model(torch.tensor([ids[:-1]]))[0].float(), dim=-1)
    target = torch.tensor(ids[1:])
    return logprobs.gather(-1, target[:, None])[:, 0], logprobs.argmax(-1) == target


def _direct_loglikelihood(lm: IsmailLM, context: str, continuation: str) -> tuple[float, bool]:
    """lm-eval's causal scoring written out: trailing spaces of the context move to the
    continuation, an empty context is the document separator alone, the sequence keeps its
    last max_seq_len + 1 ids, and the continuation is whole[len(context ids):]."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    tok, eos = lm.tokenizer, lm.tokenizer.eos_id
    context_ids = tok.encode(context).ids if context else [eos]
    whole = context_ids + tok.encode(context + continuation).ids[len(tok.encode(context).ids) :]
    n = len(whole) - len(context_ids)
    logprobs, greedy = _token_logprobs(lm.model, whole[-(CONTEXT + 1) :])
    return float(logprobs[-n:].sum()), bool(greedy[-n:].all())


PAIRS = [
    ("Soru: Türkiye'nin başkenti neresidir?\nCevap:", " Ankara"),
    ("Soru: Türkiye'nin başkenti neresidir?\nCevap: ", "Ankara'dır."),  # trailing space
    ("", "Yurtta sulh, cihanda sulh!"),  # empty context: the document separator alone
    ("Türkiye Cumhuriyeti", "'ne"),  # a suffix spelled from the word before it
    ("Ne mutlu Türküm", " diyene!"),
    (LONG_TEXT, " Hayatta en hakiki mürşit ilimdir."),  # longer than the context: truncated
]


def test_loglikelihood_equals_direct_forward_batched_or_not(lm: IsmailLM, checkpoint) -> None:
    batched = lm.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    one_by_one = IsmailLM(checkpoint, device="cpu", batch_size=1).loglikelihood(
        _requests("loglikelihood", PAIRS), disable_tqdm=True
    )
    for pair, got, single in zip(PAIRS, batched, one_by_one, strict=True):
        want_logprob, want_greedy = _direct_loglikelihood(lm, *pair)
        assert got[0] == pytest.approx(want_logprob, abs=1e-4), pair
        assert got[1] == want_greedy
        assert single[0] == pytest.approx(got[0], abs=1e-4) and single[1] == got[1]


def test_loglikelihood_rolling(lm: IsmailLM) -> None:
    eos = lm.tokenizer.eos_id
    short = "Hayatta en hakiki mürşit ilimdir, fendir."
    ids = list(lm.tokenizer.encode(short).ids)
    assert len(ids) < CONTEXT
    long_ids = list(lm.tokenizer.encode(LONG_TEXT).ids)
    assert CONTEXT < len(long_ids) < 2 * CONTEXT
    got_short, got_long = lm.loglikelihood_rolling(
        _requests("loglikelihood_rolling", [(short,), (LONG_TEXT,)]), disable_tqdm=True
    )
    assert got_short == pytest.approx(float(_token_logprobs(lm.model, [eos, *ids])[0].sum()))

    # lm-eval's disjoint windows: every token scored once; the first window starts with the
    # document separator, the last one predicts the remaining tokens with a full context
    first = _token_logprobs(lm.model, [eos, *long_ids[:CONTEXT]])[0].sum()
    rest = len(long_ids) - CONTEXT
    last = _token_logprobs(lm.model, long_ids[-(CONTEXT + 1) :])[0][-rest:].sum()
    assert torch.isfinite(torch.tensor(got_long))
    assert got_long == pytest.approx(float(first + last), abs=1e-4)


def test_generate_until_equals_greedy_generation(lm: IsmailLM) -> None:
    prompt, greedy, tok = "Ne mutlu Türküm", SamplingParams(temperature=0), lm.tokenizer
    context = tok.encode(prompt).ids  # as lm-eval tokenizes it: no separator in front
    new = list(generate_ids(lm.model, context, 16, greedy, stop_id=tok.eos_id))
    new = new[: new.index(tok.eos_id)] if tok.eos_id in new else new
    full = tok.decode(context + new, skip_special_tokens=True)[len(prompt) :]  # in context
    assert len(full) >= 6  # a random model still says something
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = full[: full.index(stop)]
    requests = _requests(
        "generate_until",
        [
            (prompt, {"until": [stop], "max_gen_toks": 16, "do_sample": False}),
            (prompt, {"until": [], "max_gen_toks": 16, "temperature": 0}),
        ],
    )
    assert lm.generate_until(requests, disable_tqdm=True) == [cut, full]


def test_registered_for_lm_eval_next_to_its_own_models(checkpoint: Path) -> None:
    from lm_eval.api.registry import get_model

    assert get_model("ismail") is IsmailLM
    assert get_model("local-completions").__name__ == "LocalCompletionsAPI"
    # model_args win over the settings lm-eval's command line always passes
    lm = IsmailLM.create_from_arg_string(
        f"pretrained={checkpoint},device=cpu,batch_size=3,dtype=float32,max_length=32",
        {"batch_size": 1, "device": "cuda:0", "max_batch_size": None},
    )
    assert (lm.batch_size, str(lm.device), lm.max_length) == (3, "cpu", 32)


@pytest.mark.slow
def test_per_document_loglikelihoods_from_logged_samples(lm: IsmailLM, tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks")
    results = evaluate_tasks(lm, tasks, tmp_path / "tasks", limit=3, log_samples=True)
    by_doc = loglikelihoods_by_doc(results["samples"][MC_TASK])
    assert sorted(by_doc) == [0, 1, 2]
    doc = results["samples"][MC_TASK][0]["doc"]
    prompt = f"Soru: {doc['question']}\nCevap:"
    direct = lm.loglikelihood(
        _requests("loglikelihood", [(prompt, " " + c) for c in doc["choices"]]), disable_tqdm=True
    )
    assert by_doc[0] == pytest.approx([score for score, _ in direct], abs=1e-4)
    assert len(results["samples"][GEN_TASK]) == 3


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.slow
def test_ismail_eval_tasks(checkpoint: Path, tmp_path: Path, capsys) -> None:
    tasks = write_tasks(tmp_path / "tasks")
    output = tmp_path / "results.json"
    code, out, err = _run(
        capsys,
        "eval",
        str(checkpoint),
        "--tasks",
        ",".join(tasks),
        "--include-path",
        str(tmp_path / "tasks"),
        "--limit",
        "4",
        "--output",
        str(output),
    )
    assert code == 0, err
    for word in (MC_TASK, GEN_TASK, "acc", "exact_match"):
        assert word in out
    results = json.loads(output.read_text())
    assert 0 <= results["results"][MC_TASK]["acc,none"] <= 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "no_such_task", "--include-path", "{tasks}"], "unknown task no_such_task"),
        (["--tasks", MC_TASK, "--include-path", "/no/tasks"], "/no/tasks is not a directory"),
        ([], "pass --data DATA (bits per byte) or --tasks NAMES"),
        (["--tasks", MC_TASK, "--data", "builtin"], "either --data"),
    ],
)
def test_eval_errors(
    argv: list[str], message: str, checkpoint: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import lm_eval.tasks

    # lm-eval's own ~15,000 tasks take tens of seconds to index: look in the local folder only
    local_only = functools.partial(lm_eval.tasks.TaskManager, include_defaults=False)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", local_only)
    write_tasks(tmp_path / "tasks")
    argv = [a.replace("{tasks}", str(tmp_path / "tasks")) for a in argv]
    code, _, err = _run(capsys, "eval", str(checkpoint), *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_eval_tasks_without_lm_eval(checkpoint: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now fails
    code, _, err = _run(capsys, "eval", str(checkpoint), "--tasks", MC_TASK)
    assert code == 2 and "pip install 'ismail-core[eval]'" in err


def test_generate_until_batches_equal_one_at_a_time(lm: IsmailLM, checkpoint) -> None:
    """Contexts of different lengths generated in one batch give what each gives alone, in
    the requests' order."""
    kwargs = {"until": ["."], "max_gen_toks": 12, "do_sample": False}
    contexts = ["Soru: Türkiye'nin başkenti neresidir?\nCevap:", "Ne mutlu", "Yurtta sulh"]
    requests = _requests("generate_until", [(c, kwargs) for c in contexts])
    batched = lm.generate_until(requests, disable_tqdm=True)
    single = IsmailLM(checkpoint, device="cpu", batch_size=1)
    assert batched == single.generate_until(requests, disable_tqdm=True)
    assert all("." not in text for text in batched)
