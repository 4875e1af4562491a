"""Whisper fine-tuned as a mixture of LoRA experts with a per-utterance gate."""

__version__ = "0.1.0"
