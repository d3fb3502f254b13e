"""What vLLM accepts: the adapter checks (PITFALLS #6: adapters vLLM rejects) and the `vllm serve` command for a
set of specialists on one base. Shared by `niche export --to vllm` and `niche serve --engine vllm`."""

from __future__ import annotations

import json
from pathlib import Path

from niche.artifact import SpecialistManifest
from niche.errors import ModelError
from niche.specialist import resolve_specialist_base

# vLLM's --max-lora-rank accepts these values.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_problems(manifest: SpecialistManifest, adapter_config: dict) -> list[str]:
    """What vLLM would reject in this adapter (see PITFALLS #6)."""
    problems = []
    if manifest.task.head is not None:
        problems.append(
            f"answers with {manifest.task.head.describe()} (one forward pass, no decoding), which vLLM cannot run; "
            "serve it with niche's torch engine"
        )
    if adapter_config.get("modules_to_save"):
        problems.append(
            f"modules_to_save={adapter_config['modules_to_save']} (vLLM cannot load trained embeddings or heads)"
        )
    if int(adapter_config.get("r", 0)) > VLLM_LORA_RANKS[-1]:
        problems.append(f"rank {adapter_config['r']} exceeds vLLM's largest --max-lora-rank {VLLM_LORA_RANKS[-1]}")
    if adapter_config.get("use_dora"):
        problems.append("DoRA adapters are not supported by vLLM's LoRA loader")
    targets = adapter_config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    unsupported = sorted(set(targets) & {"embed_tokens", "lm_head", "wte", "word_embeddings"})
    if unsupported:
        problems.append(f"LoRA on {unsupported} (vLLM applies LoRA to attention and MLP projections only)")
    return problems


def vllm_command_for(
    specialists: dict[str, tuple[Path, SpecialistManifest]], host: str = "127.0.0.1", port: int = 8000
) -> list[str]:
    bases = {manifest.base.weights_sha256 for _, manifest in specialists.values()}
    if len(bases) > 1:
        raise ModelError("the specialists were trained on different bases; vLLM serves one base")
    ranks, problems = [], []
    for name, (directory, manifest) in specialists.items():
        adapter_config = json.loads((directory / "adapter_config.json").read_text())
        ranks.append(int(adapter_config["r"]))
        problems += [f"{name}: {problem}" for problem in vllm_problems(manifest, adapter_config)]
    if problems:
        raise ModelError("vLLM would reject these adapters:\n  " + "\n  ".join(problems))
    base = resolve_specialist_base(next(iter(specialists.values()))[1])
    max_rank = next(rank for rank in VLLM_LORA_RANKS if rank >= max(ranks))
    return [
        "vllm",
        "serve",
        str(base.directory),
        "--served-model-name",
        "base",
        "--enable-lora",
        "--lora-modules",
        *[f"{name}={directory.resolve()}" for name, (directory, _) in specialists.items()],
        "--max-lora-rank",
        str(max_rank),
        "--max-loras",
        str(len(specialists)),
        "--host",
        host,
        "--port",
        str(port),
    ]
