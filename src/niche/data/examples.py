"""The canonical example every input format is turned into."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Example:
    """One supervised example: a conversation up to the answer, and the answer.

    `messages` holds the turns before the answer (user, and system/assistant turns
    when the row had them); `response` is the text the model must produce.
    """

    messages: tuple[dict[str, str], ...]
    response: str
    label: str | None = None
    context: str | None = None
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def input_text(self) -> str:
        """The last user turn: what a person would call the example's input."""
        for message in reversed(self.messages):
            if message["role"] == "user":
                return message["content"]
        return ""


def parse_json_object(text: str) -> dict | None:
    """The response as a JSON object, or None when it is not one."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def example_to_json(example: Example) -> str:
    """The example as one JSON string (to travel between processes: Ray workers, a resumable journal)."""
    return json.dumps(asdict(example), ensure_ascii=False)


def example_from_json(text: str) -> Example:
    fields = json.loads(text)
    return Example(**(fields | {"messages": tuple(fields["messages"])}))
