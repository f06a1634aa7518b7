"""Post-training: chat fine-tuning (full, LoRA, QLoRA), the engine of `ismail finetune`.

    from ismail_core.finetune.config import FinetuneConfig
    from ismail_core.finetune.trainer import finetune
    from ismail_core.train.config import build_config

    cfg = build_config({"finetune.data": "chats.jsonl", "finetune.method": "lora"},
                       config_cls=FinetuneConfig)
    result = finetune(cfg)  # result.checkpoint loads with ismail_core.load_model

Modules: config (options), formats (data files), builtin (the Turkish task set), data (labels,
length limits, packing, batches), evaluate (held-out loss and replies), lora (peft adapters),
trainer, cli.
"""
