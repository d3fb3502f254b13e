"""Tiny randomly initialised models of the families users bring, each with its family's chat template and special
tokens (test data: the matrix in test_families.py runs each through every stage).

Each model is built from its family's config class with that family's attention features turned on and made to
matter at this size: sliding windows shorter than the prompts, Gemma 2's logit softcapping low enough to change
the scores, qk-norm (Qwen3, Gemma 3), fused projections (Phi-3), layers without positions (SmolLM3), untied output
heads. Each tokenizer is SmolLM2's vocabulary with the family's special tokens added and its chat template, written
here to the format the family publishes: Llama 3's header ids and dated system header, Qwen2.5's default system
prompt, Qwen3's and SmolLM3's thinking mode, Gemma 2's refusal of a system turn and Gemma 3's folding of it,
Phi-3's role tokens, Mistral's [INST] turns with the system prompt in the last user turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content']|trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# The last assistant turn carries its (here empty) reasoning in think tags; the generation prompt opens an empty
# one only when thinking is off.
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- if loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

GEMMA2_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content']|trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content']|trim }}{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}{{ '<|system|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# The system prompt goes into the last user turn; an answer ends with eos.
MISTRAL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for message in loop_messages %}{%- if message['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}"
    "{%- endif %}{%- endfor %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.index0 == ns.last_user and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}"
    "{%- endif %}{%- endfor %}"
)

SMOLLM3_TEMPLATE = (
    "{%- set reasoning_mode = '/think' if enable_thinking is not defined or enable_thinking else '/no_think' %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set custom = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set custom = 'You are a helpful AI assistant named SmolLM, trained by Hugging Face.' %}"
    "{%- set loop_messages = messages %}{%- endif %}"
    "{{- '<|im_start|>system\\n## Metadata\\n\\nKnowledge Cutoff Date: June 2025\\nToday Date: '"
    " + strftime_now('%d %B %Y') + '\\nReasoning Mode: ' + reasoning_mode"
    " + '\\n\\n## Custom Instructions\\n\\n' + custom + '\\n\\n<|im_end|>\\n' }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'assistant' and reasoning_mode == '/no_think' %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{%- if reasoning_mode == '/no_think' %}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n' }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    "{%- endif %}"
)

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}


@dataclass(frozen=True)
class TinyFamily:
    name: str
    config_class: str
    config: dict[str, Any]
    chat_template: str | None  # None: the tokenizer's own (SmolLM2's)
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos/eos/pad -> token
    extra_tokens: tuple[str, ...] = ()
    has_system_role: bool = True  # False: its template refuses a system turn
    thinks: bool = False  # its template has a thinking mode
    writes_date: bool = False
    # Why llama.cpp cannot export this tiny model (the words its refusal must carry), or None: it exports with parity.
    gguf_refusal: str | None = None


FAMILIES: dict[str, TinyFamily] = {
    family.name: family
    for family in [
        TinyFamily(
            "llama3",
            "LlamaConfig",
            {**SMALL, "num_hidden_layers": 2, "tie_word_embeddings": False, "rope_theta": 500000.0},
            LLAMA3_TEMPLATE,
            {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>"},
            ("<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"),
            writes_date=True,
        ),
        TinyFamily(
            "qwen2.5",
            "Qwen2Config",
            {**SMALL, "num_hidden_layers": 2, "tie_word_embeddings": True},
            QWEN25_TEMPLATE,
            {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
            # llama.cpp's Qwen2 converter identifies the tokenizer by a hash of its pre-tokenizer's output, and
            # knows Qwen's, not the SmolLM2 vocabulary these tiny models carry.
            gguf_refusal="BPE pre-tokenizer was not recognized",
        ),
        TinyFamily(
            "qwen3",
            "Qwen3Config",
            {**SMALL, "num_hidden_layers": 2, "head_dim": 16, "tie_word_embeddings": True},
            QWEN3_TEMPLATE,
            {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
            ("<think>", "</think>"),
            thinks=True,
        ),
        TinyFamily(
            "gemma2",
            "Gemma2Config",
            {
                **SMALL,
                "num_hidden_layers": 2,
                "head_dim": 16,
                "sliding_window": 8,
                "attn_logit_softcapping": 2.0,
                "final_logit_softcapping": 5.0,
                "query_pre_attn_scalar": 16,
            },
            GEMMA2_TEMPLATE,
            {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
            ("<start_of_turn>", "<end_of_turn>"),
            has_system_role=False,
            # llama.cpp's Gemma 2 converter reads the sentencepiece tokenizer.model real Gemma checkpoints carry.
            gguf_refusal="tokenizer.model",
        ),
        TinyFamily(
            "gemma3",
            "Gemma3TextConfig",
            {
                **SMALL,
                # Gemma 3's own pattern, five sliding-window layers to one global (llama.cpp assumes it).
                "num_hidden_layers": 6,
                "head_dim": 16,
                "sliding_window": 8,
                "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
                "query_pre_attn_scalar": 16,
            },
            GEMMA3_TEMPLATE,
            {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
            ("<start_of_turn>", "<end_of_turn>"),
        ),
        TinyFamily(
            "phi3",
            "Phi3Config",
            {**SMALL, "num_hidden_layers": 2, "tie_word_embeddings": False},
            PHI3_TEMPLATE,
            {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
            ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
            gguf_refusal="tokenizer.model",  # as Gemma 2: real Phi-3 checkpoints carry one
        ),
        TinyFamily(
            "mistral",
            "MistralConfig",
            {**SMALL, "num_hidden_layers": 2, "head_dim": 16, "sliding_window": 8, "tie_word_embeddings": False},
            MISTRAL_TEMPLATE,
            {"bos_token": "<s>", "eos_token": "</s>"},
            ("[INST]", "[/INST]"),
            # llama.cpp runs Mistral as Llama, without a sliding window, so this model's 8-token window makes its
            # GGUF answer differently and the parity check refuses it (Mistral 7B v0.3 itself has no window).
            gguf_refusal="parity broken",
        ),
        TinyFamily(
            "smollm2",
            "LlamaConfig",
            {**SMALL, "num_hidden_layers": 2, "tie_word_embeddings": True},
            None,
        ),
        TinyFamily(
            "smollm3",
            "SmolLM3Config",
            {**SMALL, "num_hidden_layers": 4, "no_rope_layer_interval": 4, "tie_word_embeddings": True},
            SMOLLM3_TEMPLATE,
            {"eos_token": "<|im_end|>", "pad_token": "<|im_end|>"},
            ("<think>", "</think>"),
            thinks=True,
            writes_date=True,
        ),
    ]
}


def build_family(family: TinyFamily, smollm2_tokenizer_dir: Path, directory: Path, seed: int = 0) -> Path:
    """The family's tiny model and tokenizer saved as a local base in `directory`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    added = [token for token in (*family.special_tokens.values(), *family.extra_tokens) if token not in tokenizer.vocab]
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": added}, replace_extra_special_tokens=False)
    for role, token in family.special_tokens.items():
        setattr(tokenizer, role, token)
    if family.chat_template is not None:
        tokenizer.chat_template = family.chat_template
    torch.manual_seed(seed)
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        # Large enough that LoRA alone can make one token confident in a few steps.
        initializer_range=0.2,
        **family.config,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
