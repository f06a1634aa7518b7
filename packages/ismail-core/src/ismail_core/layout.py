"""The names of the files and folders that ismail writes and reads, each defined once here.

A checkpoint directory (`ismail_core.checkpoint`):
    config.json, model.safetensors, tokenizer/, trainer_state.pt (resume only),
    adapter/ (a LoRA adapter: adapter_config.json, adapter_model.safetensors,
    ismail_adapter.json; a classifier's classifier_head.safetensors), classifier.json
A run directory (`ismail_core.train`):
    train_config.json, metrics.jsonl, .train.lock,
    checkpoints/step_00000100/, checkpoints/latest, checkpoints/best,
    tensorboard/ (with --log.tensorboard), report/ (`ismail report`)
A data directory (`ismail_core.corpus`): meta.json, tokenizer/, the token shards
A tokenizer directory (`ismail_core.tokenizer`): ismail_tokenizer.json (which kind it is),
    tokenizer.json (a Hugging Face tokenizer; tr-tokenizer names its own file),
    chat_template.jinja

The files of a Hugging Face transformers folder are that format's names and live with the
code that converts it (`ismail_core.hf`, `ismail_core.hf_import`).
"""

# A checkpoint directory.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
TRAINER_STATE_FILE = "trainer_state.pt"
ADAPTER_DIR = "adapter"
CLASSIFIER_FILE = "classifier.json"

# A LoRA adapter directory (PEFT's file names, plus ours naming the base checkpoint).
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_INFO_FILE = "ismail_adapter.json"
# A classifier's head, stored beside its LoRA adapter.
CLASSIFIER_HEAD_FILE = "classifier_head.safetensors"

# A run directory.
TRAIN_CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
RUN_LOCK_FILE = ".train.lock"
CHECKPOINTS_DIR = "checkpoints"
# A step checkpoint is STEP_PREFIX and the step in 8 digits (`train.resume`).
STEP_PREFIX = "step_"
LATEST = "latest"
BEST = "best"
TENSORBOARD_DIR = "tensorboard"
REPORT_DIR = "report"

# A data directory (its tokenizer is in TOKENIZER_DIR too).
META_FILE = "meta.json"

# A tokenizer directory.
TOKENIZER_MARKER_FILE = "ismail_tokenizer.json"
HF_TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
