"""Training: the rolling / pooled LoRA fine-tune (config, loop, checkpoint, distributed) and
the small-base pre-training (`pretrain/`)."""
