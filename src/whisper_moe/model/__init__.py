"""Whisper base model, mixture-of-LoRA-experts layers, routing gate and decoding."""
