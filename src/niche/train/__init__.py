"""Training: LoRA SFT on the transformers Trainer with supervised-only logits."""

from niche.train.sft import TrainResult, train

__all__ = ["TrainResult", "train"]
