"""The model families niche is tested with, and their public checkpoints: what `niche models` lists.

Each checkpoint's dimensions (`Shape`: what memory and compute depend on, and what `niche plan` estimates from) are
those of its published config.json; its size is computed from them. Hub ids load where the user has a network (`base: Qwen/Qwen2.5-0.5B-Instruct`); without
one, a local directory or a .gguf file of the same model does. What each family needs from niche (a system prompt
folded where the template has no system role, the thinking mode fixed off, the date its template writes fixed) is
handled from the template itself (`niche.data.template.pin_template`), not from this list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """What memory and compute depend on: a decoder-only transformer's dimensions."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = False
    explicit_head_dim: int | None = None  # when not hidden / heads (Qwen3, Gemma)

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden // self.heads

    def linear_parameters_per_layer(self) -> int:
        query = self.heads * self.head_dim
        attention = self.hidden * query * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        return attention + 3 * self.hidden * self.intermediate

    def parameters(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * (self.linear_parameters_per_layer() + 2 * self.hidden) + embeddings + self.hidden

    def lora_parameters(self, rank: int) -> int:
        """LoRA on every linear layer: rank · (fan_in + fan_out) per layer."""
        kv, query = self.kv_heads * self.head_dim, self.heads * self.head_dim
        pairs = [(self.hidden, query), (self.hidden, kv), (self.hidden, kv), (query, self.hidden)]
        pairs += [(self.hidden, self.intermediate)] * 2 + [(self.intermediate, self.hidden)]
        return self.layers * sum(rank * (fan_in + fan_out) for fan_in, fan_out in pairs)


@dataclass(frozen=True)
class Checkpoint:
    hub_id: str
    family: str
    licence: str
    context_length: int
    shape: Shape


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json `model_type` values
    template: str  # what its chat template does that niche handles
    attention: str


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in [
        Family("Llama 3.x", ("llama",), "header ids, begin-of-text in the template, a dated system header", "GQA"),
        Family("Qwen2.5", ("qwen2",), "ChatML, a default system prompt", "GQA, QKV bias"),
        Family("Qwen3", ("qwen3",), "ChatML, a thinking mode (fixed off unless asked)", "GQA, qk-norm"),
        Family(
            "Gemma 2",
            ("gemma2",),
            "no system role (niche folds the system prompt into the first user turn)",
            "sliding window on every other layer, logit softcapping",
        ),
        Family(
            "Gemma 3",
            ("gemma3_text", "gemma3"),
            "the system prompt folded into the first user turn by its template",
            "sliding window on 5 of 6 layers, qk-norm",
        ),
        Family("Phi-3/4", ("phi3",), "role tokens, end-of-turn <|end|>", "fused QKV and gate/up projections"),
        Family("Mistral", ("mistral",), "[INST] turns, the system prompt in the last user turn", "GQA, sliding window"),
        Family("SmolLM2", (), "ChatML with a default system prompt (a Llama architecture)", "GQA"),
        Family(
            "SmolLM3",
            ("smollm3",),
            "ChatML, a dated metadata block, a thinking mode",
            "GQA, no positions every 4th layer",
        ),
    ]
}

LLAMA = "Llama 3.2 Community License"
GEMMA = "Gemma Terms of Use"
CHECKPOINTS: list[Checkpoint] = [
    Checkpoint(
        "HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2", "Apache-2.0", 8192, Shape(576, 30, 1536, 9, 3, 49152, True)
    ),
    Checkpoint(
        "HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2", "Apache-2.0", 8192, Shape(960, 32, 2560, 15, 5, 49152, True)
    ),
    Checkpoint(
        "HuggingFaceTB/SmolLM2-1.7B-Instruct", "SmolLM2", "Apache-2.0", 8192, Shape(2048, 24, 8192, 32, 32, 49152, True)
    ),
    Checkpoint("HuggingFaceTB/SmolLM3-3B", "SmolLM3", "Apache-2.0", 65536, Shape(2048, 36, 11008, 16, 4, 128256, True)),
    Checkpoint("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5", "Apache-2.0", 32768, Shape(896, 24, 4864, 14, 2, 151936, True)),
    Checkpoint(
        "Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5", "Apache-2.0", 32768, Shape(1536, 28, 8960, 12, 2, 151936, True)
    ),
    Checkpoint(
        "Qwen/Qwen2.5-7B-Instruct", "Qwen2.5", "Apache-2.0", 32768, Shape(3584, 28, 18944, 28, 4, 152064, False)
    ),
    Checkpoint("Qwen/Qwen3-0.6B", "Qwen3", "Apache-2.0", 40960, Shape(1024, 28, 3072, 16, 8, 151936, True, 128)),
    Checkpoint("Qwen/Qwen3-1.7B", "Qwen3", "Apache-2.0", 40960, Shape(2048, 28, 6144, 16, 8, 151936, True, 128)),
    Checkpoint("Qwen/Qwen3-4B", "Qwen3", "Apache-2.0", 40960, Shape(2560, 36, 9728, 32, 8, 151936, True, 128)),
    Checkpoint("Qwen/Qwen3-8B", "Qwen3", "Apache-2.0", 40960, Shape(4096, 36, 12288, 32, 8, 151936, False, 128)),
    Checkpoint(
        "meta-llama/Llama-3.2-1B-Instruct", "Llama 3.x", LLAMA, 131072, Shape(2048, 16, 8192, 32, 8, 128256, True)
    ),
    Checkpoint(
        "meta-llama/Llama-3.2-3B-Instruct", "Llama 3.x", LLAMA, 131072, Shape(3072, 28, 8192, 24, 8, 128256, True)
    ),
    Checkpoint(
        "meta-llama/Llama-3.1-8B-Instruct",
        "Llama 3.x",
        "Llama 3.1 Community License",
        131072,
        Shape(4096, 32, 14336, 32, 8, 128256, False),
    ),
    Checkpoint("google/gemma-2-2b-it", "Gemma 2", GEMMA, 8192, Shape(2304, 26, 9216, 8, 4, 256000, True, 256)),
    Checkpoint("google/gemma-2-9b-it", "Gemma 2", GEMMA, 8192, Shape(3584, 42, 14336, 16, 8, 256000, True, 256)),
    Checkpoint("google/gemma-3-270m-it", "Gemma 3", GEMMA, 32768, Shape(640, 18, 2048, 4, 1, 262144, True, 256)),
    Checkpoint("google/gemma-3-1b-it", "Gemma 3", GEMMA, 32768, Shape(1152, 26, 6912, 4, 1, 262144, True, 256)),
    Checkpoint(
        "microsoft/Phi-3.5-mini-instruct", "Phi-3/4", "MIT", 131072, Shape(3072, 32, 8192, 32, 32, 32064, False)
    ),
    Checkpoint("microsoft/Phi-4-mini-instruct", "Phi-3/4", "MIT", 131072, Shape(3072, 32, 8192, 24, 8, 200064, True)),
    Checkpoint(
        "mistralai/Mistral-7B-Instruct-v0.3",
        "Mistral",
        "Apache-2.0",
        32768,
        Shape(4096, 32, 14336, 32, 8, 32768, False),
    ),
]


def family_of(model_type: str) -> str:
    """The family name of a config.json `model_type` (the model type itself when no family lists it)."""
    return next((family.name for family in FAMILIES.values() if model_type in family.model_types), model_type)
