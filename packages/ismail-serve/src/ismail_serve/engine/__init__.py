"""The serving engine, in nano-vllm's layout: one module per job.

sequence.py    a generation request's state (prompt, output, KV slot, sampling, streaming text;
               the text itself is ismail_core.generate.ContinuationText)
kv_slots.py    the pool of preallocated KV-cache rows ("slots")
scheduler.py   waiting queue -> running batch; chunked prefill; which sequences decode
model_runner.py the model and its cache: prefill chunks and one batched decode step
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
