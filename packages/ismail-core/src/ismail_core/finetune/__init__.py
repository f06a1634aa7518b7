"""Post-training, the engine of `ismail finetune`: chat fine-tuning (full, LoRA, QLoRA),
preference tuning (DPO, cDPO, IPO, RPO) and, through ismail_core.classify, classification.

    from ismail_core.finetune.config import finetune_config
    from ismail_core.finetune.trainer import finetune

    cfg = finetune_config({"finetune.data": "chats.jsonl", "finetune.method": "lora"})
    result = finetune(cfg)  # result.checkpoint loads with ismail_core.load_model
    dpo = finetune(finetune_config({"finetune.task": "dpo"}))  # the task's own defaults

Modules: config (options and per-task defaults), formats (data files), builtin (the Turkish
task set), builtin_preferences (its preference pairs), data (labels, length limits, packing,
batches), preference_data (preference records), preference (the losses), evaluate (held-out
loss and replies), lora (peft adapters), trainer, dpo (the preference trainer), cli.
"""
