"""Constrained decoding shared by eval and serve: a label specialist's label set (a token prefix tree of the
answers), or JSON that validates against a schema.

A constraint masks one row's next-token logits and follows the tokens chosen for it. JSON schemas go through
llguidance (the grammar engine vLLM and SGLang use; a small Rust wheel, no GPU toolchain). A field the schema
marks copied (`niche.data.spans.COPY_KEYWORD`) is decoded only as a run of whole words of the request's input
(`schema_for_input` turns the mark into a regular expression for that input).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from niche.data.examples import Example
from niche.data.spans import COPY_KEYWORD, words_with_offsets
from niche.data.template import TemplateEncoder
from niche.errors import NicheError


class AnswerTrie:
    """Token-level prefix tree of the allowed answers (each ending in its end-of-turn token)."""

    def __init__(self, sequences: Sequence[Sequence[int]], stop_ids: Sequence[int]) -> None:
        self.root: dict[int, dict] = {}
        self.stop_ids = list(stop_ids)
        self.longest = max((len(sequence) for sequence in sequences), default=0)
        for sequence in sequences:
            node = self.root
            for token in sequence:
                node = node.setdefault(token, {})

    def allowed_after(self, prefix: Sequence[int]) -> list[int]:
        node = self.root
        for token in prefix:
            if token not in node:
                # The answer is complete (or off the trie): only a stop token may follow.
                return self.stop_ids
            node = node[token]
        return list(node) or self.stop_ids


def answer_trie(encoder: TemplateEncoder, answers: Sequence[str]) -> AnswerTrie:
    """Answers tokenized exactly as training tokenized them after the prompt."""
    probe = Example(messages=({"role": "user", "content": "x"},), response="")
    return AnswerTrie([encoder.completion_ids(probe, answer) for answer in answers], encoder.stop_ids)


BIT_POSITIONS = torch.arange(32, dtype=torch.int32)

# Longest run of words a copied value may take, whatever its length bound: the expression nests one group per word,
# and the grammar engine refuses more than 250 levels.
COPY_MAX_WORDS = 64
# Characters with a meaning in the grammar engine's regular expressions (Rust's regex crate), escaped in copied text.
_REGEX_SPECIAL = set("\\.+*?()|[]{}^$#&-~")


def _literal(text: str) -> str:
    return "".join(f"\\{character}" if character in _REGEX_SPECIAL else character for character in text)


def substring_pattern(text: str, max_length: int | None = None, allow_empty: bool = False) -> str:
    """A regular expression matching exactly the runs of whole words (and punctuation marks) of `text`, as they
    are written there, of at most `max_length` characters. Each run is its first word followed by an optional
    chain of the next ones, so the expression grows with the words times the longest run, not with every
    substring written out."""
    pieces = words_with_offsets(text)
    runs = []
    for first, (_, start, end) in enumerate(pieces):
        if max_length is not None and end - start > max_length:
            continue
        chain, closing = _literal(text[start:end]), ""
        previous_end = end
        for _, _, next_end in pieces[first + 1 : first + COPY_MAX_WORDS]:
            if max_length is not None and next_end - start > max_length:
                break
            chain += f"({_literal(text[previous_end:next_end])}"
            closing += ")?"
            previous_end = next_end
        runs.append(chain + closing)
    alternatives = ([""] if allow_empty or not runs else []) + runs
    return "^(" + "|".join(alternatives) + ")$"


def schema_for_input(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """The schema with every copied field constrained to runs of words of `text` (a copied field the schema
    requires may also be empty, so an input without its value still gets a valid answer). The runs are one
    expression in `$defs` that each copied field references beside its own bounds: compiled once, not once per
    field (a SLURP schema has 53 copied fields). Schemas without copied fields come back unchanged."""
    if not has_copied_fields(schema):
        return schema
    patterned = _with_patterns(schema, not words_with_offsets(text), required=True)
    patterned["$defs"] = {
        **schema.get("$defs", {}),
        _COPY_DEF: {"pattern": substring_pattern(text)},
        _COPY_OR_EMPTY_DEF: {"pattern": substring_pattern(text, allow_empty=True)},
    }
    return patterned


_COPY_DEF = "niche-copy"
_COPY_OR_EMPTY_DEF = "niche-copy-or-empty"


def has_copied_fields(schema: dict[str, Any] | None) -> bool:
    return schema is not None and COPY_KEYWORD in json.dumps(schema)


def _with_patterns(node: Any, nothing_to_copy: bool, required: bool) -> Any:
    if isinstance(node, list):
        return [_with_patterns(item, nothing_to_copy, required) for item in node]
    if not isinstance(node, dict):
        return node
    needed = set(node.get("required", []))
    copied = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            copied[key] = {
                name: _with_patterns(child, nothing_to_copy, name in needed)
                for name, child in value.items()
                # An optional copied field has no value to take from an input without words: it is left out.
                if name in needed or not (nothing_to_copy and isinstance(child, dict) and child.get(COPY_KEYWORD))
            }
        elif key == "items":
            copied[key] = _with_patterns(value, nothing_to_copy, required=False)
        else:
            copied[key] = _with_patterns(value, nothing_to_copy, required) if isinstance(value, (dict, list)) else value
    if copied.get(COPY_KEYWORD) is True:
        # `pattern` binds strings only, so a field written as a string or a list keeps its lists (whose items are
        # marked and referenced themselves) and its own length bounds.
        copied["$ref"] = f"#/$defs/{_COPY_OR_EMPTY_DEF if required else _COPY_DEF}"
    return copied


class SchemaError(NicheError):
    """A response_format schema that cannot be compiled into a grammar."""


class TokenConstraint(Protocol):
    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (one row) with every token the constraint forbids set to -inf."""

    def accept(self, token: int) -> None:
        """Follow the token chosen for this row."""

    def complete(self) -> bool:
        """True once the output is finished: only an end-of-turn token may follow."""


class LabelConstraint:
    """Only answers from a label set, token by token along their prefix tree."""

    def __init__(self, trie: AnswerTrie) -> None:
        self.trie = trie
        self.generated: list[int] = []

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        allowed = torch.tensor(self.trie.allowed_after(self.generated), device=logits.device)
        return torch.full_like(logits, float("-inf")).index_copy(0, allowed, logits[allowed])

    def accept(self, token: int) -> None:
        self.generated.append(token)

    def complete(self) -> bool:
        return set(self.trie.allowed_after(self.generated)) <= set(self.trie.stop_ids)


class JsonGrammar:
    """llguidance's tokenizer view of one model, shared by every JSON constraint on that model."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: list[int]) -> None:
        import llguidance.hf

        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=stop_ids)
        self.vocab_size = vocab_size

    def compile(self, schema: dict[str, Any] | None, where: str = "response_format.json_schema.schema") -> str:
        """The grammar text for `schema` (None: any JSON object); a schema it cannot compile is a SchemaError
        naming `where` the schema came from."""
        import llguidance

        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                schema if schema is not None else {"type": "object"},
                # Compact JSON: a free-whitespace grammar lets a small model pad its answer with blank lines.
                defaults={"whitespace_flexible": False},
            )
        except (ValueError, TypeError) as error:
            raise SchemaError(f"{where}: not a JSON schema object: {error}") from error
        problem = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if problem and not problem.startswith("WARNING"):
            raise SchemaError(f"{where}: cannot be compiled: {problem}")
        return grammar

    def constraint(self, grammar: str) -> JsonConstraint:
        return JsonConstraint(self, grammar)


class JsonConstraint:
    def __init__(self, grammar: JsonGrammar, text: str) -> None:
        import llguidance
        import llguidance.torch

        self.matcher = llguidance.LLMatcher(grammar.tokenizer, text)
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, grammar.vocab_size)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        # Unpacked here rather than with llguidance's helper, which is torch.compile'd: a compiler toolchain
        # and seconds of compilation on the first request.
        allowed = ((self.bitmask[0].unsqueeze(-1) >> BIT_POSITIONS) & 1).flatten()[: logits.shape[0]].bool()
        return logits.masked_fill(~allowed.to(logits.device), float("-inf"))

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise NicheError(f"constrained decoding failed: {self.matcher.get_error()}")

    def complete(self) -> bool:
        return self.matcher.is_stopped()
