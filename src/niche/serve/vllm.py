"""The scale path: the vLLM command that serves the same base with the same specialist adapters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

from niche.artifact import discover_specialists
from niche.errors import ModelError
from niche.vllm_compat import vllm_command_for


def vllm_command(specialists_dir: Path, host: str = "127.0.0.1", port: int = 8000) -> list[str]:
    """`vllm serve BASE --enable-lora --lora-modules name=dir ...` for every specialist in the directory."""
    specialists = discover_specialists(specialists_dir)
    if not specialists:
        raise ModelError(f"{specialists_dir}: no specialists to serve")
    return vllm_command_for(specialists, host, port)


VLLM_TEMPLATE_NOTE = (
    "Note: vLLM applies the base tokenizer's chat template; send each specialist's system prompt "
    "(niche.json template.system_prompt) with the request to match training."
)


class VllmLauncher:
    """The `vllm` engine: vLLM serves the specialists in its own process, from the command this engine builds.
    Engine options of the in-process engines (batch size, queue) are vLLM's own flags and not passed on."""

    def __init__(self, specialists_dir: Path, **ignored_options: Any) -> None:
        self.specialists_dir = specialists_dir
        self.ignored_options = sorted(ignored_options)

    def command(self, host: str = "127.0.0.1", port: int = 8000) -> list[str]:
        return vllm_command(self.specialists_dir, host, port)

    def launch(self, host: str, port: int) -> NoReturn:
        command = self.command(host, port)
        os.execvp(command[0], command)
