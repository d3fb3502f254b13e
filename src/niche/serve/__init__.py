"""Serving: specialists behind an OpenAI-compatible API, many adapters on one base model.

Engines, by the name `niche serve --engine` takes: `torch` (continuous batching with stacked multi-LoRA, in
this process), `llamacpp` (a GGUF base with GGUF LoRAs, in this process) and `vllm` (the equivalent vLLM
command, printed or launched: `niche.serve.vllm`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

IN_PROCESS_ENGINES = ("torch", "llamacpp")


def create_engine(name: str, specialists: Path, **options: Any) -> Any:
    """An in-process engine by name. Options every engine takes: max_loaded, timeout_s, max_queue (waiting
    requests past which a request gets 429); the torch engine also max_batch_size and max_wait_ms (ignored by
    llamacpp, which runs one request at a time)."""
    from niche.errors import ConfigError

    if name == "torch":
        from niche.serve.engine import TorchEngine

        return TorchEngine(specialists, **options)
    if name == "llamacpp":
        from niche.serve.llamacpp import LlamaCppEngine

        options.pop("max_batch_size", None)
        options.pop("max_wait_ms", None)
        return LlamaCppEngine(specialists, **options)
    raise ConfigError(f"--engine {name!r}: expected torch, llamacpp or vllm")
