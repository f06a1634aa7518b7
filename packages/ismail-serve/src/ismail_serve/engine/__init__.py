"""The serving engine, in nano-vllm's layout: one module per job.

sequence.py    a generation request's state (prompt, output, KV slot, sampling, streaming text)
kv_slots.py    the pool of preallocated KV-cache rows ("slots")
scheduler.py   waiting queue -> running batch; chunked prefill; which sequences decode
model_runner.py the model and its cache: prefill chunks and one batched decode step
detokenizer.py complete-character text with stop strings held back
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
