"""The engine loop on a tiny random model: batching must not change any sequence's result."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest
import torch
from ismail_core import Transformer
from ismail_core.sampling import SamplingParams
from ismail_serve.engine import QueueFullError, SequenceOutput, SequenceRequest

PROMPTS = [
    "Kitaplarımızdan birini",
    "İstanbul'da güneşli bir gün; öğretmenler ışığı",
    "Ağaç",
    "hello world, the quick brown fox jumps over the lazy dog",
    "Çocuklar bahçede",
    "üzüm bağları",
]


class Collector:
    """An output sink that gathers the updates of one request and signals when it is done."""

    def __init__(self, num_sequences: int) -> None:
        self.text: dict[int, list[str]] = defaultdict(list)
        self.finish: dict[int, str] = {}
        self.errors: dict[int, str | None] = {}
        self.updates: list[SequenceOutput] = []
        self._remaining = num_sequences
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.first = threading.Event()

    def __call__(self, out: SequenceOutput) -> None:
        with self._lock:
            self.updates.append(out)
            self.text[out.index].append(out.text)
            self.first.set()
            if out.finish_reason is not None:
                self.finish[out.index] = out.finish_reason
                self.errors[out.index] = out.error
                self._remaining -= 1
                if self._remaining == 0:
                    self.done.set()

    def result(self, index: int = 0) -> str:
        assert self.done.wait(60), "the engine did not finish the request"
        return "".join(self.text[index])


def seq_request(tokenizer, rid: str, prompt: str, index: int = 0, **kw) -> SequenceRequest:
    params = kw.pop("params", SamplingParams(temperature=0.0))
    return SequenceRequest(
        request_id=rid,
        index=index,
        prompt_ids=tokenizer.encode(prompt).ids,
        params=params,
        max_tokens=kw.pop("max_tokens", 10),
        skip_special_tokens=False,
        **kw,
    )


def submit_greedy(engine, tokenizer, prompts: list[str], max_tokens: int) -> list[Collector]:
    """Submit one greedy request per prompt; their collectors, in order."""
    collectors = []
    for i, prompt in enumerate(prompts):
        c = Collector(1)
        engine.submit([seq_request(tokenizer, f"r{i}", prompt, max_tokens=max_tokens)], c)
        collectors.append(c)
    return collectors


@torch.no_grad()
def reference_greedy(model, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """Greedy decoding by recomputing the whole sequence each step (no cache, batch of one)."""
    ids = list(prompt_ids)
    for _ in range(max_tokens):
        logits = model(torch.tensor([ids], device=model.embed.weight.device))[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt_ids) :]


@pytest.mark.parametrize("prefill_chunk", [5, 64])
def test_batched_greedy_matches_uncached_reference(make_engine, model, tokenizer, prefill_chunk):
    # 6 requests, 4 at once: queueing, prefill in 5-token chunks (one prompt at a time) or in
    # right-padded batches of whole prompts of different lengths, and batched decode with rows
    # at different positions must give each request its solo, uncached result.
    engine = make_engine(max_batch=4, prefill_chunk=prefill_chunk)
    collectors = submit_greedy(engine, tokenizer, PROMPTS, 12)
    for prompt, c in zip(PROMPTS, collectors):
        expected = reference_greedy(model, tokenizer.encode(prompt).ids, 12)
        assert c.result() == tokenizer.decode(expected)
        assert c.finish[0] == "length"
    assert engine.runner.blocks.usage == 0
    assert engine.scheduler.num_running == 0


def record_decode_batches(engine) -> list[list[str]]:
    """From now on, the request ids of the rows of each batched decode forward pass."""
    batches: list[list[str]] = []
    forward = engine.runner.forward

    def recording(seq_ids, rows, starts, **kw):
        if all(len(row) == 1 for row in rows):
            request_of = {s.seq_id: s.request_id for s in engine.scheduler.running}
            batches.append([request_of[i] for i in seq_ids])
        return forward(seq_ids, rows, starts, **kw)

    engine.runner.forward = recording
    return batches


def test_seeded_sampling_is_independent_of_the_batch(make_engine, tokenizer):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234)
    engine = make_engine(start=False)  # stepped here: all four rows start in the same step
    batches = record_decode_batches(engine)
    alone = Collector(1)
    engine.submit([seq_request(tokenizer, "a", PROMPTS[1], params=params, max_tokens=20)], alone)
    while engine.step():
        pass
    solo_text = alone.result()
    assert all(rows == ["a"] for rows in batches)

    crowd = [Collector(1) for _ in range(3)]
    target = Collector(1)
    for i, c in enumerate(crowd):
        unseeded = SamplingParams(temperature=1.2)
        engine.submit([seq_request(tokenizer, f"c{i}", PROMPTS[i], params=unseeded)], c)
    engine.submit([seq_request(tokenizer, "b", PROMPTS[1], params=params, max_tokens=20)], target)
    batches.clear()
    while engine.step():
        pass
    # the seeded row decoded in one batch with the unseeded ones (at other positions) ...
    assert ["c0", "c1", "c2", "b"] in batches
    # ... and still sampled exactly its solo tokens
    assert target.result() == solo_text


def test_stop_string_spanning_tokens_cuts_the_text(make_engine, tokenizer):
    engine = make_engine()
    full = Collector(1)
    engine.submit([seq_request(tokenizer, "full", PROMPTS[0], max_tokens=30)], full)
    text = full.result()
    assert len(text) > 8, f"need a longer greedy output to cut, got {text!r}"
    stop = text[4:8]  # four characters, usually more than one token
    cut = Collector(1)
    req = seq_request(tokenizer, "cut", PROMPTS[0], max_tokens=30, stop=[stop])
    engine.submit([req], cut)
    assert cut.result() == text[: text.find(stop)]
    assert cut.finish[0] == "stop"


def test_stop_token_ends_the_sequence(make_engine, model, tokenizer):
    engine = make_engine()
    prompt_ids = tokenizer.encode(PROMPTS[2]).ids
    greedy = reference_greedy(model, prompt_ids, 6)
    c = Collector(1)
    stop_ids = frozenset({greedy[3]})
    req = seq_request(tokenizer, "s", PROMPTS[2], max_tokens=30, stop_token_ids=stop_ids)
    engine.submit([req], c)
    first_stop = greedy.index(greedy[3])
    assert c.result() == tokenizer.decode(greedy[:first_stop])
    assert c.finish[0] == "stop"


def test_stream_updates_hold_only_complete_characters(make_engine, tokenizer):
    # Random sampling on a byte-level vocabulary produces lone UTF-8 continuation bytes; the
    # text of each update must still be whole characters and add up to a one-shot decode.
    engine = make_engine()
    for seed in range(4):
        c = Collector(1)
        params = SamplingParams(temperature=1.5, seed=seed)
        engine.submit([seq_request(tokenizer, f"u{seed}", "ğ", params=params, max_tokens=40)], c)
        text = c.result()
        pieces = [u.text for u in c.updates]
        assert "".join(pieces) == text
        for piece in pieces:
            assert piece.encode("utf-8").decode("utf-8") == piece


def test_abort_frees_the_blocks(make_engine, tokenizer):
    engine = make_engine(max_batch=2)
    c = Collector(1)
    engine.submit([seq_request(tokenizer, "long", PROMPTS[0], max_tokens=80)], c)
    assert c.first.wait(30)
    engine.abort("long")
    assert c.done.wait(30)
    assert c.finish[0] == "abort"
    assert engine.runner.blocks.usage == 0


def test_waiting_queue_is_bounded(make_engine, tokenizer):
    engine = make_engine(start=False, max_batch=1, max_waiting=1)
    sink = Collector(3)
    engine.submit([seq_request(tokenizer, "a", "x")], sink)  # takes the free slot
    engine.submit([seq_request(tokenizer, "b", "x")], sink)  # waits
    with pytest.raises(QueueFullError):
        engine.submit([seq_request(tokenizer, "c", "x")], sink)
    # All-or-nothing: a two-sequence request does not fit either.
    with pytest.raises(QueueFullError):
        engine.submit([seq_request(tokenizer, "d", "x", index=i) for i in range(2)], sink)


def test_timeout_ends_waiting_and_running_sequences(make_engine, tokenizer):
    engine = make_engine(start=False, request_timeout=0.05)
    c = Collector(2)
    engine.submit([seq_request(tokenizer, "t", "x", index=i, max_tokens=80) for i in range(2)], c)
    time.sleep(0.1)
    engine.start()
    assert c.done.wait(30)
    assert c.finish == {0: "timeout", 1: "timeout"}
    assert engine.runner.blocks.usage == 0


class FailOnBlock(torch.nn.Module):
    """The real model, except that any decode step including a row whose first cache block is
    `block` raises (set `block` once the sequence is admitted)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.block = -1

    def new_cache(self, *args, **kwargs):
        return self.model.new_cache(*args, **kwargs)

    def forward(self, input_ids, block_tables=None, **kwargs):
        if input_ids.shape[1] == 1 and self.block in block_tables[:, 0].tolist():
            raise RuntimeError("injected failure")
        return self.model(input_ids, block_tables=block_tables, **kwargs)


def test_a_failing_sequence_does_not_affect_the_others(make_engine, model, tokenizer):
    failing = FailOnBlock(model)
    engine = make_engine(start=False, model_override=failing, max_batch=3)
    collectors = [Collector(1) for _ in range(3)]
    for i, c in enumerate(collectors):
        engine.submit([seq_request(tokenizer, f"f{i}", PROMPTS[i], max_tokens=8)], c)
    engine.step()  # admits and prefills all three, in order
    failing.block = engine.runner.blocks.block_table(engine.scheduler.running[1].seq_id)[0]
    engine.start()
    for i in (0, 2):
        expected = reference_greedy(model, tokenizer.encode(PROMPTS[i]).ids, 8)
        assert collectors[i].result() == tokenizer.decode(expected)
        assert collectors[i].finish[0] == "length"
    collectors[1].result()
    assert collectors[1].finish[0] == "error"
    assert "injected failure" in collectors[1].errors[0]
    assert engine.runner.blocks.usage == 0


def test_drain_waits_for_running_sequences(make_engine, tokenizer):
    engine = make_engine()
    c = Collector(1)
    engine.submit([seq_request(tokenizer, "d", PROMPTS[0], max_tokens=30)], c)
    engine.stop_accepting()
    assert engine.wait_idle(60)
    assert c.finish[0] == "length"
    from ismail_serve.engine import EngineStoppedError

    with pytest.raises(EngineStoppedError):
        engine.submit([seq_request(tokenizer, "late", "x")], c)


def test_prefill_batches_respect_budget_and_cache_end(make_engine, tokenizer):
    from ismail_serve.engine.scheduler import PrefillChunk
    from ismail_serve.engine.sequence import Sequence

    engine = make_engine(start=False, max_model_len=96, prefill_chunk=40)

    def chunk(start: int, end: int) -> PrefillChunk:
        req = seq_request(tokenizer, "x", "x")
        req.prompt_ids = [1] * end
        return PrefillChunk(Sequence(req, None, lambda out: None, None, None), start, end)

    chunks = [chunk(0, 10), chunk(0, 3), chunk(0, 9), chunk(90, 93), chunk(0, 30), chunk(0, 2)]
    batches = engine.steps._batches(chunks)
    assert sorted(id(c) for b in batches for c in b) == sorted(id(c) for c in chunks)
    for batch in batches:
        width = max(c.end - c.start for c in batch)
        assert len(batch) == 1 or len(batch) * width <= 40
        assert all(c.start + width <= 96 for c in batch)


@pytest.mark.gpu
def test_engine_on_cuda_matches_the_uncached_reference(model, tokenizer):
    import copy

    from ismail_core.model.runner import ModelRunner
    from ismail_serve.engine import EngineConfig, LLMEngine

    cuda_model = copy.deepcopy(model).to("cuda")
    runner = ModelRunner(cuda_model, num_blocks=24)
    engine = LLMEngine(runner, tokenizer, EngineConfig(max_batch=4, max_model_len=96))
    engine.start()
    try:
        collectors = []
        for i, prompt in enumerate(PROMPTS[:4]):
            c = Collector(1)
            seeded = SamplingParams(temperature=0.0, seed=i)
            engine.submit([seq_request(tokenizer, f"g{i}", prompt, params=seeded)], c)
            collectors.append(c)
        for prompt, c in zip(PROMPTS, collectors):
            expected = reference_greedy(cuda_model, tokenizer.encode(prompt).ids, 10)
            assert c.result() == tokenizer.decode(expected)
    finally:
        engine.shutdown()


# a shared prefix of a few blocks
SYSTEM = "Kitaplarımızdan birini okudunuz mu? Çocuklar bahçede oynuyor. Ağaçların gölgesinde. "
VARIANTS = {
    "mla": {},
    "gqa": {"attention": "gqa", "n_kv_heads": 1},
    "sliding": {"attention": "gqa", "n_kv_heads": 1, "sliding_window": 8},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_is_the_same_with_prefix_caching_off_on_and_forced_preemption(
    make_engine, make_config, tokenizer, variant
):
    """Prompts sharing a system prefix, 4 at once: with prefix caching the shared blocks are
    reused; with a cache of one sequence's blocks, sequences are preempted and recomputed.
    Every run gives each request its solo, uncached greedy result."""
    torch.manual_seed(3)
    cfg = make_config(tokenizer.vocab_size)
    model = Transformer(type(cfg).from_dict({**cfg.to_dict(), **VARIANTS[variant]})).eval()
    prompts = [SYSTEM + p for p in PROMPTS]
    expected = [reference_greedy(model, tokenizer.encode(p).ids, 10) for p in prompts]
    runs = {
        "no prefix caching": {"enable_prefix_caching": False},
        "prefix caching": {},
        "preemption": {"num_blocks": 24, "block_size": 4},  # 96 tokens: one full sequence
    }
    for name, options in runs.items():
        engine = make_engine(model_override=model, max_batch=4, **options)
        collectors = submit_greedy(engine, tokenizer, prompts, 10)
        for want, c in zip(expected, collectors):
            assert c.result() == tokenizer.decode(want), name
        blocks = engine.runner.blocks
        assert blocks.usage == 0
        if name == "prefix caching":
            assert blocks.prefix_hits >= 2 * 16  # the later prompts reuse the system prefix
        if name == "no prefix caching":
            assert blocks.prefix_hits == 0
        if name == "preemption":
            assert engine.scheduler.num_preemptions > 0
        engine.shutdown()
