"""Fine-tuning: chat data, supervised fine-tuning, LoRA / QLoRA adapters, synthetic tasks."""
