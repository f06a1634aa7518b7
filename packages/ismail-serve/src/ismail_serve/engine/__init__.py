"""The serving engine, in nano-vllm's layout: one module per job.

sequence.py    a generation request's state (prompt, output, cache progress, sampling,
               streaming text; the text itself is ismail_core.generate.ContinuationText)
scheduler.py   waiting queue -> running batch by free cache blocks; chunked prefill;
               preemption; which sequences decode
runner.py      a step's prefill batches, batched decode (through ismail-core's ModelRunner:
               model + paged cache + block manager) and sampling -> token ids; failures
               confined to their rows
sampler.py     one token per row on the model's device, and the log-probabilities asked for
logprobs.py    token log-probabilities (prompt scoring and generated tokens) with their texts
engine.py      the engine loop thread tying them together, plus submit/abort from the API
"""

from ismail_serve.engine.engine import EngineConfig, EngineStoppedError, LLMEngine, QueueFullError
from ismail_serve.engine.sequence import SequenceOutput, SequenceRequest

__all__ = [
    "EngineConfig",
    "EngineStoppedError",
    "LLMEngine",
    "QueueFullError",
    "SequenceOutput",
    "SequenceRequest",
]
