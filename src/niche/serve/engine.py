"""The torch engine: one base model in memory, specialists' LoRA adapters loaded on demand (LRU).

Prompts are rendered with each specialist's stored template, so a request is seen exactly as training saw
its examples. Generation holds a lock: switching adapters changes the shared model's state.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from niche.data.examples import Example
from niche.data.template import PromptTemplate, TemplateEncoder, build_template
from niche.errors import ModelError, NicheError
from niche.eval.generation import AnswerTrie, answer_trie
from niche.hardware import detect_hardware
from niche.models import load_model, load_tokenizer
from niche.specialist import MANIFEST_NAME, SpecialistManifest, read_manifest, resolve_specialist_base

log = logging.getLogger(__name__)
BASE_MODEL_NAME = "base"


class UnknownModelError(NicheError):
    """The request names a model this server does not serve."""


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    labels_only: bool = False


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def discover_specialists(directory: Path) -> dict[str, tuple[Path, SpecialistManifest]]:
    """Every subdirectory holding a niche.json, by specialist name."""
    found = {}
    for manifest_path in sorted(Path(directory).glob(f"*/{MANIFEST_NAME}")):
        manifest = read_manifest(manifest_path.parent)
        found[manifest.name] = (manifest_path.parent, manifest)
    return found


class TorchEngine:
    """Base model plus specialists' adapters, generating one request at a time."""

    def __init__(self, specialists_dir: Path, max_loaded: int = 8) -> None:
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
        hardware = detect_hardware()
        base = resolve_specialist_base(first_manifest)
        self.base_spec = first_manifest.base.spec
        self.base_directory = base.directory
        self.tokenizer = load_tokenizer(base)
        self.model: Any = load_model(base, hardware.dtype, hardware.device).eval()
        self.device = hardware.device
        self.max_loaded = max(1, max_loaded)
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.lock = threading.Lock()
        self.label_tries: dict[str, AnswerTrie] = {}
        self.encoders = {
            name: TemplateEncoder(self.tokenizer, manifest.template.to_template())
            for name, (_, manifest) in self.specialists.items()
        }
        self.encoders[BASE_MODEL_NAME] = TemplateEncoder(
            self.tokenizer, build_template(self.tokenizer, None, None, None)
        )

    def refresh(self, name: str) -> None:
        """Re-read one specialist from disk (new or retrained); its adapter reloads on its next request."""
        directory = self.directory / name
        manifest = read_manifest(directory)
        base = (manifest.base.spec, manifest.base.weights_sha256)
        if base != (self.base_spec, self.base_sha256):
            raise ModelError(
                f"{directory}: trained on base {manifest.base.spec!r} ({manifest.base.weights_sha256[:12]}...), "
                f"but this server holds {self.base_spec!r} ({self.base_sha256[:12]}...)"
            )
        with self.lock:
            self._drop(name)
            self.specialists[name] = (directory, manifest)
            self.encoders[name] = TemplateEncoder(self.tokenizer, manifest.template.to_template())
            self.label_tries.pop(name, None)

    def load(self, name: str) -> None:
        self.encoder_of(name)
        with self.lock:
            self._activate(name)

    def unload(self, name: str) -> bool:
        self.encoder_of(name)
        with self.lock:
            return self._drop(name)

    def _drop(self, name: str) -> bool:
        if name not in self.loaded:
            return False
        del self.loaded[name]
        self.model.delete_adapter(name)
        log.info("unloaded specialist %s", name)
        return True

    def router(self, threshold: float = 0.4, embedder: Any | None = None) -> Any:
        """A DomainRouter over the served specialists, falling back to the bare base."""
        from niche.serve.router import DomainRouter, training_inputs

        examples = {
            name: training_inputs(directory, manifest) for name, (directory, manifest) in self.specialists.items()
        }
        return DomainRouter(examples, BASE_MODEL_NAME, threshold, embedder=embedder)

    def model_names(self) -> list[str]:
        return [*self.specialists, BASE_MODEL_NAME]

    def template_of(self, name: str) -> PromptTemplate:
        return self.encoder_of(name).template

    def encoder_of(self, name: str) -> TemplateEncoder:
        if name not in self.encoders:
            raise UnknownModelError(f"model {name!r} is not served here; available: {', '.join(self.model_names())}")
        return self.encoders[name]

    def _activate(self, name: str) -> contextlib.AbstractContextManager:
        """Make `name`'s adapter the active one, loading it (and evicting the least recently used) if needed."""
        from peft import PeftModel

        if name == BASE_MODEL_NAME:
            return self.model.disable_adapter() if isinstance(self.model, PeftModel) else contextlib.nullcontext()
        directory = str(self.specialists[name][0])
        if name not in self.loaded:
            if not isinstance(self.model, PeftModel):
                self.model = PeftModel.from_pretrained(self.model, directory, adapter_name=name).eval()
            else:
                self.model.load_adapter(directory, adapter_name=name)
            self.loaded[name] = None
            log.info("loaded specialist %s", name)
            while len(self.loaded) > self.max_loaded:
                evicted, _ = self.loaded.popitem(last=False)
                self.model.delete_adapter(evicted)
                log.info("evicted specialist %s (max_loaded=%d)", evicted, self.max_loaded)
        self.loaded.move_to_end(name)
        self.model.set_adapter(name)
        return contextlib.nullcontext()

    def stream(self, name: str, messages: list[dict[str, str]], params: SamplingParams) -> Iterator[str | Completion]:
        """Text deltas as they are decoded, then the finished Completion."""
        encoder = self.encoder_of(name)
        trie = self._label_trie(name, encoder) if params.labels_only else None
        prompt = encoder.prompt_ids(Example(messages=tuple(messages), response=""))
        generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        with self.lock, torch.inference_mode(), self._activate(name):
            yield from self._decode(encoder, prompt, params, generator, trie)

    def complete(self, name: str, messages: list[dict[str, str]], params: SamplingParams) -> Completion:
        *_, completion = self.stream(name, messages, params)
        return completion

    def _label_trie(self, name: str, encoder: TemplateEncoder) -> AnswerTrie:
        manifest = self.specialists[name][1] if name in self.specialists else None
        if manifest is None or not manifest.task.labels:
            raise NicheError(f"response_format 'label' needs a label specialist; {name!r} has no label set")
        if name not in self.label_tries:
            self.label_tries[name] = answer_trie(encoder, manifest.task.labels)
        return self.label_tries[name]

    def _decode(
        self,
        encoder: TemplateEncoder,
        prompt: list[int],
        params: SamplingParams,
        generator: torch.Generator | None,
        trie: AnswerTrie | None = None,
    ) -> Iterator[str | Completion]:
        stops = set(encoder.stop_ids)
        # Hold back enough text that a stop string split across tokens is never half-sent.
        holdback = max((len(stop) for stop in params.stop), default=1) - 1
        inputs = torch.tensor([prompt], device=self.device)
        past, generated, text, sent, finish = None, [], "", "", "length"
        for _ in range(params.max_tokens):
            output = self.model(input_ids=inputs, past_key_values=past, use_cache=True)
            past = output.past_key_values
            logits = output.logits[0, -1].float()
            if trie is not None:
                allowed = torch.tensor(trie.allowed_after(generated), device=logits.device)
                logits = torch.full_like(logits, float("-inf")).index_copy(0, allowed, logits[allowed])
            token = next_token(logits, params, generator)
            if token in stops:
                finish = "stop"
                break
            generated.append(token)
            text = encoder.tokenizer.decode(generated, skip_special_tokens=True)
            cut = min((text.find(stop) for stop in params.stop if stop in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                break
            # A token that ends mid-character decodes to U+FFFD until the next one completes it.
            ready = len(text.rstrip("\ufffd")) - holdback
            if ready > len(sent):
                yield text[len(sent) : ready]
                sent = text[:ready]
            inputs = torch.tensor([[token]], device=self.device)
        if len(text) > len(sent):
            yield text[len(sent) :]
        yield Completion(text, finish, len(prompt), len(generated))


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
