"""The engine interface every serving engine implements, and what they share.

The contract: an engine serves the specialists found in one directory (plus the bare base, model "base"),
each with its stored chat template. `submit(name, messages, params)` queues a request and returns a `Generation`
at once; its `stream()` yields text pieces and then one final `Completion` (text, finish reason, token counts),
`result()` waits for that completion, and `cancel()` (a client that went away) ends it and frees its place at
the engine's next step. Unknown models raise `UnknownModelError`, a full queue `QueueFull` (429), a request that
outlives the timeout `RequestTimeout` (504). Label and JSON-schema constraints, stop strings, temperature and
top_p behave the same on every engine: `EngineCore` implements them over the logits a subclass computes.
Adapters load on first use and the least recently used is evicted past `max_loaded`; `load`, `unload` and
`refresh` are the admin operations. A subclass runs the model: it loads and retires adapters
(`_load_adapter`, `_retire`) and, in its own scheduler thread, turns queued generations into logits and calls
`_advance` with them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import queue
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from niche.artifact import MANIFEST_NAME, SpecialistManifest, discover_specialists, read_manifest
from niche.data.examples import Example
from niche.data.template import PromptTemplate, TemplateEncoder, build_template
from niche.decoding import (
    AnswerTrie,
    JsonGrammar,
    LabelConstraint,
    TokenConstraint,
    answer_trie,
    has_copied_fields,
    schema_for_input,
)
from niche.errors import ModelError, NicheError
from niche.hardware import one_thread
from niche.models import load_tokenizer
from niche.serve.router import DomainRouter, training_inputs
from niche.specialist import resolve_specialist_base
from niche.tagger import tagger_input
from niche.tracking import deployed_version

log = logging.getLogger(__name__)


BASE_MODEL_NAME = "base"


BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


class UnknownModelError(NicheError):
    """The request names a model this server does not serve."""


class RequestTimeout(NicheError):
    """A request ran past the server's time limit and was stopped."""


class ServerBusy(NicheError):
    """Every adapter slot is serving requests, so another specialist cannot be loaded now."""


class QueueFull(NicheError):
    """More requests are waiting than the server's bound (`max_queue`): the client should retry later (429)."""


DEFAULT_MAX_QUEUE = 256  # waiting requests; past it a request is refused at once rather than left to time out


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # text | label (the specialist's label set) | json (json_schema, or any object) | auto (json under a JSON
    # specialist's stored schema, text otherwise)
    response: str = "text"
    json_schema: dict[str, Any] | None = None
    ignore_eos: bool = False  # benchmarks: decode max_tokens whatever the model says


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(eq=False)
class Generation:
    """One request in flight: its prompt and settings, its decoding state, and the events it reports."""

    name: str
    encoder: TemplateEncoder
    prompt: list[int]
    params: SamplingParams
    constraint: TokenConstraint | None
    deadline: float
    generator: torch.Generator | None = None
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    adapter: str = ""
    generated: list[int] = field(default_factory=list)
    text: str = ""
    sent: str = ""
    finished: bool = False
    revision: str = ""  # which version of the specialist answered (registry version or training time)
    source_text: str = ""  # a tagger's input text, whose spans its answer copies

    def cancel(self) -> None:
        """Stop the request (its client went away): the engine drops its row at the next step, and a thread
        waiting on its events wakes now instead of at the deadline."""
        self.cancelled.set()
        self.events.put(_CANCELLED)

    def stream(self) -> Iterator[str | Completion]:
        """Text deltas as they are decoded, then the finished Completion; closing it cancels the request."""
        try:
            while True:
                # The scheduler reports timeouts itself; this bound only covers a scheduler stuck in one long step.
                try:
                    item = self.events.get(timeout=max(self.deadline - time.monotonic(), 0) + 30)
                except queue.Empty:
                    raise RequestTimeout(f"request to {self.name!r} timed out") from None
                if item is _CANCELLED:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Completion):
                    return
        finally:
            self.cancelled.set()

    def result(self) -> Completion:
        *_, completion = self.stream()
        return completion


_CANCELLED = object()  # the event `Generation.cancel` posts to end its stream


def revision_of(directory: Path, manifest: SpecialistManifest) -> str:
    """The registry version a deployed specialist came from, else when it was trained."""
    version = deployed_version(directory)
    return f"v{version}" if version else manifest.created_at


class EngineCore:
    """What every engine shares: the served specialists and their stored templates, request intake and limits,
    constrained sampling, stop strings and streaming; a subclass runs the model (`_acquire`, `_retire`)."""

    def __init__(
        self,
        specialists_dir: Path,
        max_loaded: int = 8,
        timeout_s: float = 120.0,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self.specialists = discover_specialists(specialists_dir)
        if not self.specialists:
            raise ModelError(f"{specialists_dir}: no specialists (subdirectories with {MANIFEST_NAME}) to serve")
        bases = {(manifest.base.spec, manifest.base.weights_sha256) for _, manifest in self.specialists.values()}
        if len(bases) > 1:
            raise ModelError(
                f"{specialists_dir}: specialists were trained on different bases ({sorted(spec for spec, _ in bases)}); "
                "one server holds one base model: serve each base's specialists from their own directory"
            )
        self.directory = Path(specialists_dir)
        first_manifest = next(iter(self.specialists.values()))[1]
        self.base_sha256 = first_manifest.base.weights_sha256
        self.base = resolve_specialist_base(first_manifest)
        self.base_spec = first_manifest.base.spec
        self.base_directory = self.base.directory
        self.tokenizer = load_tokenizer(self.base)
        self.vocab_size = len(self.tokenizer)
        self.context_length: int | None = None
        self.max_loaded = max(1, max_loaded)
        self.timeout_s = timeout_s
        self.max_queue = max(1, max_queue)
        self._intake = threading.Lock()  # the queue bound's check and the put are one step
        self.label_tries: dict[str, AnswerTrie] = {}
        self.grammars: dict[str, str] = {}
        self._json_grammar: JsonGrammar | None = None
        self.encoders = {
            name: TemplateEncoder(self.tokenizer, manifest.template.to_template())
            for name, (_, manifest) in self.specialists.items()
        }
        self.revisions = {
            name: revision_of(directory, manifest) for name, (directory, manifest) in self.specialists.items()
        }
        self.adapter_revisions: dict[str, str] = {BASE_ADAPTER: "base"}
        self.encoders[BASE_MODEL_NAME] = TemplateEncoder(
            self.tokenizer, build_template(self.tokenizer, None, None, None)
        )
        # The lock is held for each model step, and by admin operations between steps.
        self.lock = threading.RLock()
        self.loaded: OrderedDict[str, str] = OrderedDict()  # specialist -> its adapter's name in the model, LRU
        self.retired: set[str] = set()  # replaced or unloaded adapters that running rows still decode with
        self._adapter_versions = itertools.count(1)
        self.incoming: queue.SimpleQueue[Generation] = queue.SimpleQueue()
        self.waiting: deque[Generation] = deque()
        self.rows: list[Generation] = []
        self.prefix_hits = 0
        self.forward_seconds = {"prefill": 0.0, "decode": 0.0}
        self.forward_calls = {"prefill": 0, "decode": 0}
        self._closed = threading.Event()

    def _next_adapter_name(self, name: str) -> str:
        # A fresh adapter name per load, so a reloaded specialist never collides with rows still on the old one.
        return re.sub(r"\W", "_", name) + f"_v{next(self._adapter_versions)}"

    def _acquire(self, name: str, busy: set[str] | None = None) -> str | None:
        """`name`'s adapter in the model, loading it (evicting the least recently used idle one) if needed;
        None when every slot is busy."""
        if name == BASE_MODEL_NAME:
            return BASE_ADAPTER
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name]
        busy = self._busy_adapters() if busy is None else busy
        idle = [loaded for loaded, adapter in self.loaded.items() if adapter not in busy]  # LRU first
        if len(self.loaded) >= self.max_loaded and not idle:
            return None
        adapter = self._next_adapter_name(name)
        self._load_adapter(name, adapter)
        while len(self.loaded) >= self.max_loaded:
            evicted = idle.pop(0)
            self._retire(evicted)
            log.info("evicted specialist %s (max_loaded=%d)", evicted, self.max_loaded)
        self._adapter_ready(adapter)
        self.loaded[name] = adapter
        self.adapter_revisions[adapter] = self.revisions[name]
        log.info("loaded specialist %s", name)
        return adapter

    def _load_adapter(self, name: str, adapter: str) -> None:
        """Load `name`'s adapter into the model under the name `adapter`."""
        raise NotImplementedError

    def _adapter_ready(self, adapter: str) -> None:
        """After a load and any eviction it caused."""

    def _retire(self, name: str) -> bool:
        raise NotImplementedError

    def _busy_adapters(self) -> set[str]:
        return {row.adapter for row in self.rows if not row.finished}

    def decoding(self) -> int:
        """Requests in the running batch."""
        return sum(not row.finished for row in self.rows)

    def queued(self) -> int:
        """Requests submitted and not yet started (cancelled ones count until the scheduler drops them)."""
        return self.incoming.qsize() + len(self.waiting)

    # ---- requests -------------------------------------------------------------------------------------------

    # Whether this engine answers head specialists, label heads and taggers (one forward pass, no decoding).
    runs_label_heads = False

    def submit(self, name: str, messages: list[dict[str, str]], params: SamplingParams) -> Generation:
        """Queue a request; bad requests (unknown model, bad schema, too long) fail here, before any work."""
        encoder = self.encoder_of(name)
        example = Example(messages=tuple(messages), response="")
        head = self.head_of(name)
        if head is not None and head.kind == "tagger":
            text = encoder.template.render_prompt(self.tokenizer, example)
            prompt = tagger_input(self.tokenizer, text, head.echo).input_ids
            return self.generate(name, prompt, self._head_params(name, params), source_text=text)
        prompt = encoder.prompt_ids(example)
        if head is not None:
            return self.generate(name, prompt, self._head_params(name, params))
        params = self._with_stored_schema(name, params)
        return self.generate(name, prompt, params, self._constraint(name, encoder, params, example.input_text))

    def head_of(self, name: str) -> Any:
        """The head record of a head specialist (label head or tagger), None for any other model."""
        manifest = self.specialists[name][1] if name in self.specialists else None
        return manifest.task.head if manifest is not None else None

    def _head_params(self, name: str, params: SamplingParams) -> SamplingParams:
        manifest = self.specialists[name][1]
        head = manifest.task.head
        assert head is not None
        if not self.runs_label_heads:
            raise NicheError(
                f"{name!r} answers with {head.describe()}, which this engine cannot run; serve it with --engine torch"
            )
        if head.kind == "label" and params.response == "json":
            raise NicheError(f"{name!r} answers with a label from its label set; it cannot answer in JSON")
        if head.kind == "tagger" and params.response == "label":
            raise NicheError(f"{name!r} answers in JSON under its stored schema; it has no label set")
        if head.kind == "tagger" and params.json_schema not in (None, manifest.task.output_schema):
            raise NicheError(
                f"{name!r} answers with a tagging head, under the schema it was trained with only; leave "
                "response_format out (or json_object) to get it"
            )
        return params

    def _with_stored_schema(self, name: str, params: SamplingParams) -> SamplingParams:
        """A JSON specialist decodes under the schema it was trained with when the request asks for no format."""
        manifest = self.specialists[name][1] if name in self.specialists else None
        if params.response != "auto":
            return params
        if manifest is None or manifest.task.output_schema is None:
            return dataclasses.replace(params, response="text")
        return dataclasses.replace(params, response="json", json_schema=manifest.task.output_schema)

    def generate(
        self,
        name: str,
        prompt: list[int],
        params: SamplingParams,
        constraint: TokenConstraint | None = None,
        source_text: str = "",
    ) -> Generation:
        encoder = self.encoder_of(name)
        if self.context_length and len(prompt) + params.max_tokens > self.context_length:
            raise NicheError(
                f"the prompt ({len(prompt)} tokens) plus max_tokens ({params.max_tokens}) exceed the model's "
                f"context of {self.context_length} tokens"
            )
        if self._closed.is_set():
            raise NicheError("the engine is shut down")
        generation = Generation(
            name,
            encoder,
            prompt,
            params,
            constraint,
            deadline=time.monotonic() + self.timeout_s,
            generator=torch.Generator().manual_seed(params.seed) if params.seed is not None else None,
            source_text=source_text,
        )
        with self._intake:
            if self.queued() >= self.max_queue:
                raise QueueFull(
                    f"{self.queued()} requests are already waiting (max_queue={self.max_queue}); retry later"
                )
            self.incoming.put(generation)
        return generation

    def stream(self, name: str, messages: list[dict[str, str]], params: SamplingParams) -> Iterator[str | Completion]:
        return self.submit(name, messages, params).stream()

    def complete(self, name: str, messages: list[dict[str, str]], params: SamplingParams) -> Completion:
        return self.submit(name, messages, params).result()

    def _constraint(
        self, name: str, encoder: TemplateEncoder, params: SamplingParams, source_text: str = ""
    ) -> TokenConstraint | None:
        """The request's constraint; a schema's copied fields are decoded from `source_text`, the request's last
        user message, so their grammar is the request's own."""
        if params.response == "label":
            return LabelConstraint(self._label_trie(name, encoder))
        if params.response != "json":
            return None
        if has_copied_fields(params.json_schema):
            assert params.json_schema is not None
            return self._json().constraint(self._json().compile(schema_for_input(params.json_schema, source_text)))
        key = json.dumps(params.json_schema, sort_keys=True)
        if key not in self.grammars:
            self.grammars[key] = self._json().compile(params.json_schema)
        return self._json().constraint(self.grammars[key])

    def _json(self) -> JsonGrammar:
        if self._json_grammar is None:
            stop_ids = sorted({token for encoder in self.encoders.values() for token in encoder.stop_ids})
            self._json_grammar = JsonGrammar(self.tokenizer, self.vocab_size, stop_ids)
        return self._json_grammar

    def _label_trie(self, name: str, encoder: TemplateEncoder) -> AnswerTrie:
        manifest = self.specialists[name][1] if name in self.specialists else None
        if manifest is None or not manifest.task.labels:
            raise NicheError(f"response_format 'label' needs a label specialist; {name!r} has no label set")
        if name not in self.label_tries:
            self.label_tries[name] = answer_trie(encoder, manifest.task.labels)
        return self.label_tries[name]

    # ---- specialists ----------------------------------------------------------------------------------------

    def refresh(self, name: str) -> None:
        """Re-read one specialist from disk (new or retrained); running requests finish on the old adapter."""
        directory = self.directory / name
        manifest = read_manifest(directory)
        base = (manifest.base.spec, manifest.base.weights_sha256)
        if base != (self.base_spec, self.base_sha256):
            raise ModelError(
                f"{directory}: trained on base {manifest.base.spec!r} ({manifest.base.weights_sha256[:12]}...), "
                f"but this server holds {self.base_spec!r} ({self.base_sha256[:12]}...)"
            )
        with self.lock:
            self._retire(name)
            self.specialists[name] = (directory, manifest)
            self.revisions[name] = revision_of(directory, manifest)
            self.encoders[name] = TemplateEncoder(self.tokenizer, manifest.template.to_template())
            self.label_tries.pop(name, None)

    # Admin calls and routing run in the server's request threads, beside the scheduler: on one thread each.
    def load(self, name: str) -> None:
        self.encoder_of(name)
        with self.lock, one_thread():
            if self._acquire(name) is None:
                raise ServerBusy(f"all {self.max_loaded} adapter slots are serving requests; try again")

    def unload(self, name: str) -> bool:
        self.encoder_of(name)
        with self.lock, one_thread():
            return self._retire(name)

    def loaded_specialists(self) -> list[str]:
        with self.lock:
            return list(self.loaded)

    def router(self, threshold: float = 0.4, embedder: Any | None = None) -> Any:
        """A DomainRouter over the served specialists, falling back to the bare base."""
        examples = {
            name: training_inputs(directory, manifest) for name, (directory, manifest) in self.specialists.items()
        }
        with one_thread():
            return DomainRouter(examples, BASE_MODEL_NAME, threshold, embedder=embedder)

    def model_names(self) -> list[str]:
        return [*self.specialists, BASE_MODEL_NAME]

    def template_of(self, name: str) -> PromptTemplate:
        return self.encoder_of(name).template

    def encoder_of(self, name: str) -> TemplateEncoder:
        if name not in self.encoders:
            raise UnknownModelError(f"model {name!r} is not served here; available: {', '.join(self.model_names())}")
        return self.encoders[name]

    def close(self) -> None:
        self._closed.set()
        self._scheduler.join(timeout=30)

    def _expired(self, generation: Generation) -> bool:
        if time.monotonic() <= generation.deadline:
            return False
        generation.events.put(RequestTimeout(f"request to {generation.name!r} ran past {self.timeout_s:g} s"))
        generation.finished = True
        return True

    def _advance(self, rows: list[Generation], logits: torch.Tensor) -> None:
        """Pick each row's next token and report what it adds; rows that end are marked finished."""
        for index, row in enumerate(rows):
            try:
                if row.cancelled.is_set():
                    row.finished = True
                elif not self._expired(row):
                    self._advance_row(row, logits[index])
            except Exception as error:  # noqa: BLE001 - a failing row (e.g. its grammar) ends alone
                row.events.put(error)
                row.finished = True

    def _advance_row(self, row: Generation, logits: torch.Tensor) -> None:
        if row.constraint is not None:
            if row.constraint.complete():
                return self._finish(row, "stop")
            logits = row.constraint.mask(logits)
        token = next_token(logits, row.params, row.generator)
        if token in row.encoder.stop_ids and not row.params.ignore_eos:
            return self._finish(row, "stop")
        if row.constraint is not None:
            row.constraint.accept(token)
        row.generated.append(token)
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        cut = min((text.find(stop) for stop in row.params.stop if stop in text), default=-1)
        if cut >= 0:
            row.text = text[:cut]
            return self._finish(row, "stop")
        row.text = text
        # Hold back enough text that a stop string split across tokens is never half-sent, and a token that
        # ends mid-character (decoded as U+FFFD until the next one completes it).
        holdback = max((len(stop) for stop in row.params.stop), default=1) - 1
        ready = len(text.rstrip("\ufffd")) - holdback
        if ready > len(row.sent):
            row.events.put(text[len(row.sent) : ready])
            row.sent = text[:ready]
        if len(row.generated) >= row.params.max_tokens:
            self._finish(row, "length")

    def _finish(self, row: Generation, reason: str) -> None:
        if len(row.text) > len(row.sent):
            row.events.put(row.text[len(row.sent) :])
        row.events.put(Completion(row.text, reason, len(row.prompt), len(row.generated)))
        row.finished = True


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Greedy at temperature 0, otherwise temperature and nucleus (top_p) sampling."""
    if params.temperature <= 0:
        return int(logits.argmax())
    probabilities = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        ordered, indices = probabilities.sort(descending=True)
        keep = ordered.cumsum(0) - ordered < params.top_p
        probabilities = torch.zeros_like(probabilities).scatter(0, indices[keep], ordered[keep])
    return int(torch.multinomial(probabilities, 1, generator=generator))
