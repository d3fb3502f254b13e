"""The prompt template: one place that turns an Example into tokens, for training and inference alike.

The supervised span is found by rendering the conversation twice (without and with
the answer) and taking the difference, never from template markers or the pad id, so
the end-of-turn token is always learned even when pad == eos (SmolLM2: both id 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError

from niche.data.examples import Example
from niche.errors import NicheError

if TYPE_CHECKING:
    from niche.config import PromptConfig

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PromptTemplate:
    """The exact system prompt and chat template a specialist was trained with."""

    chat_template: str
    system_prompt: str | None = None

    def conversation(self, example: Example) -> list[dict[str, str]]:
        messages = [dict(message) for message in example.messages]
        if example.context:
            messages[-1]["content"] = f"Context:\n{example.context}\n\n{messages[-1]['content']}"
        if self.system_prompt is not None and messages[0]["role"] != "system":
            # An empty system prompt is sent as an empty system turn: it keeps a template's built-in default out.
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def render_prompt(self, tokenizer: Any, example: Example) -> str:
        """The text the model sees before it answers: identical in train, eval and serve."""
        return tokenizer.apply_chat_template(
            self.conversation(example), chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )

    def render_completion(self, tokenizer: Any, example: Example, response: str | None = None) -> str:
        """The answer as the template writes it, end-of-turn marker included, trailing whitespace dropped."""
        prompt = self.render_prompt(tokenizer, example)
        answer = example.response if response is None else response
        full = tokenizer.apply_chat_template(
            [*self.conversation(example), {"role": "assistant", "content": answer}],
            chat_template=self.chat_template,
            tokenize=False,
        )
        if not full.startswith(prompt):
            raise NicheError(
                "the chat template does not render the prompt as a prefix of the full conversation, so the answer "
                "span cannot be located; use a template whose generation prompt matches its assistant turns"
            )
        return full[len(prompt) :].rstrip()


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def supervised_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def stop_token_ids(tokenizer: Any, template: PromptTemplate) -> list[int]:
    """Token ids that end an answer: the template's end-of-turn token and the tokenizer's eos."""
    probe = Example(messages=({"role": "user", "content": "x"},), response="y")
    try:
        completion = template.render_completion(tokenizer, probe)
    except NicheError:
        # A template with no assistant turns (a label head's input) ends nothing but the input: eos alone.
        completion = ""
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = {completion_ids[-1]} if completion_ids and completion_ids[-1] in tokenizer.all_special_ids else set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


class TemplateEncoder:
    """Tokenizes examples with one tokenizer and template; the stop tokens are worked out once."""

    def __init__(self, tokenizer: Any, template: PromptTemplate) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.stop_ids = stop_token_ids(tokenizer, template)

    def prompt_ids(self, example: Example) -> list[int]:
        return self.tokenizer(self.template.render_prompt(self.tokenizer, example), add_special_tokens=False)[
            "input_ids"
        ]

    def completion_ids(self, example: Example, response: str | None = None) -> list[int]:
        """Answer plus end-of-turn, tokenized on their own exactly as the model generates them after the prompt."""
        text = self.template.render_completion(self.tokenizer, example, response)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids or ids[-1] not in self.stop_ids:
            # The template ends turns with no special token: teach the model to stop with eos.
            ids = [*ids, self.tokenizer.eos_token_id]
        return ids

    def training_example(self, example: Example) -> EncodedExample:
        """Prompt tokens masked out, answer and end-of-turn tokens supervised."""
        prompt_ids = self.prompt_ids(example)
        completion_ids = self.completion_ids(example)
        return EncodedExample(
            input_ids=prompt_ids + completion_ids, labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids
        )


# Prepended to a template that writes a built-in system prompt when a conversation has none: an empty system
# turn takes its place.
EMPTY_SYSTEM_TURN = (
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{%- set messages = [{'role': 'system', 'content': ''}] + messages %}{%- endif %}"
)


# Prepended to a template that refuses a system turn (Gemma 2, early Mistral): the system prompt goes before the
# first user message, as the families without a system role document it (Gemma 3's own template does the same).
FOLD_SYSTEM_TURN = (
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set folded = messages[0]['content'] %}"
    "{%- if messages|length > 1 and messages[1]['role'] == 'user' %}"
    "{%- set folded = (folded + '\\n\\n' if folded else '') + messages[1]['content'] %}"
    "{%- set messages = [{'role': 'user', 'content': folded}] + messages[2:] %}"
    "{%- else %}{%- set messages = [{'role': 'user', 'content': folded}] + messages[1:] %}{%- endif %}"
    "{%- endif %}"
)
# Templates that write today's date (Llama 3.x's "Today Date", SmolLM3's metadata block) would render a different
# prompt on the day a specialist serves than on the day it trained; the date is fixed instead, for every consumer
# of the stored template (the saved tokenizer, GGUF metadata, Ollama, vLLM).
PINNED_DATE = (
    "{%- set date_string = '26 Jul 2024' %}"
    "{%- macro strftime_now(format) -%}"
    "{{ format|replace('%d', '26')|replace('%b', 'Jul')|replace('%B', 'July')|replace('%Y', '2024')"
    "|replace('%y', '24')|replace('%m', '07')|replace('%A', 'Friday')|replace('%a', 'Fri') }}"
    "{%- endmacro %}"
)
DATE_NAMES = ("strftime_now", "date_string")


def thinking_mode(thinking: bool) -> str:
    """Fixes a thinking template's mode (Qwen3, SmolLM3: `enable_thinking`), whatever a caller passes: off unless
    asked, so that answers carry no thinking tags the training rows never had."""
    return "{%- set enable_thinking = " + ("true" if thinking else "false") + " %}"


def pin_template(tokenizer: Any, chat_template: str, thinking: bool = False) -> str:
    """The chat template with what varies between renders fixed (the date, the thinking mode) and a system turn
    folded into the first user message where the template has no system role. Baked into the template, so that
    every consumer renders what training saw."""
    template = chat_template
    if "enable_thinking" in template:
        template = thinking_mode(thinking) + template
    if any(name in template for name in DATE_NAMES):
        template = PINNED_DATE + template
    if not has_system_role(tokenizer, template):
        template = FOLD_SYSTEM_TURN + template
    return template


def has_system_role(tokenizer: Any, chat_template: str) -> bool:
    """Whether the template writes a system turn's text (it neither refuses it nor drops it)."""
    marker = "niche-system-probe"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": marker}, {"role": "user", "content": "x"}],
            chat_template=chat_template,
            add_generation_prompt=True,
            tokenize=False,
        )
    except TemplateError:
        return False
    return marker in text


def default_chat_template(tokenizer: Any) -> str:
    return tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else CHATML_TEMPLATE


def build_template(
    tokenizer: Any,
    system_prompt: str | None,
    chat_template: str | None,
    labels: list[str] | None,
    drop_default_system_prompt: bool = False,
    thinking: bool = False,
) -> PromptTemplate:
    """Freeze the template for a specialist: '{labels}' in the system prompt becomes the label list, and the
    template is pinned (`pin_template`: date, thinking mode, system turn). With `drop_default_system_prompt` and
    no system prompt, a template that writes a built-in system prompt of its own when none is given (SmolLM2's
    "You are a helpful AI assistant named SmolLM...", 16 tokens on every row) gets an empty system turn instead."""
    template = pin_template(tokenizer, chat_template or default_chat_template(tokenizer), thinking)
    if system_prompt is None and drop_default_system_prompt and writes_default_system_prompt(tokenizer, template):
        # Baked into the template rather than added by niche, so that every consumer of the stored template
        # (the saved tokenizer, GGUF metadata, Ollama's Modelfile, vLLM) renders what training saw.
        template = EMPTY_SYSTEM_TURN + template
    return PromptTemplate(chat_template=template, system_prompt=system_prompt_with_labels(system_prompt, labels))


def specialist_template(tokenizer: Any, prompt: PromptConfig, labels: list[str] | None) -> PromptTemplate:
    """The template a generative specialist is trained and served with: the configured prompt and chat template,
    and no built-in default system prompt paid on every row when none is configured."""
    return build_template(
        tokenizer,
        prompt.system_prompt,
        prompt.chat_template,
        labels,
        drop_default_system_prompt=True,
        thinking=prompt.thinking,
    )


def writes_default_system_prompt(tokenizer: Any, chat_template: str) -> bool:
    """True when the template renders a conversation without a system turn longer than one with an empty one."""
    user = [{"role": "user", "content": "x"}]

    def rendered(messages: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    try:
        return rendered(user) > rendered([{"role": "system", "content": ""}, *user])
    except TemplateError:  # templates that refuse a system turn (Gemma, early Mistral) have no default either
        return False


def system_prompt_with_labels(system_prompt: str | None, labels: list[str] | None) -> str | None:
    if system_prompt and labels:
        return system_prompt.replace("{labels}", ", ".join(labels))
    return system_prompt
