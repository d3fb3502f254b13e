"""Training: one entry, `train(config)`, for every method. SFT (generative answers, a label head, or with a KD
teacher: `niche.train.sft`) runs on the transformers Trainer with supervised-only logits; GRPO
(`niche.train.grpo`) on TRL's GRPOTrainer. Both write the specialist through `niche.train.common`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from niche.config import NicheConfig
from niche.train.common import TrainResult
from niche.train.grpo import train_grpo
from niche.train.sft import train_sft


def train(
    config: NicheConfig, *, resume: bool = False, show_progress: bool = True, callbacks: Sequence[Any] = ()
) -> TrainResult:
    """Train a LoRA specialist as configured (training.method) and write it to config.output_dir / config.name.
    `callbacks` (transformers TrainerCallbacks) see every step and log, e.g. to report progress elsewhere."""
    if config.training.method == "grpo":
        return train_grpo(config, show_progress=show_progress, callbacks=callbacks)
    return train_sft(config, resume=resume, show_progress=show_progress, callbacks=callbacks)


__all__ = ["TrainResult", "train"]
