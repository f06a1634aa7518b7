"""Post-training: instruction/chat fine-tuning (full and LoRA)."""
