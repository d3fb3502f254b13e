"""The torch engine: one base model, many specialists' LoRA adapters, one continuous-batching scheduler.

Requests wait in a queue; a scheduler thread admits them into the running batch (when idle it waits up to
`max_wait_ms` for companions), prefills the newcomers together, writes their keys and values into free rows
of the batch's cache (`kvcache.BatchKVCache`, kept in place between steps), and then decodes one token for
every row per step. Rows of different specialists share each forward pass through
PEFT's mixed-adapter batches (`adapter_names=`), so K specialists cost one base model's compute. Finished,
cancelled and timed-out rows leave the batch at once and new ones join at the next step. Prompts are rendered
with each specialist's stored template, so serving sees requests exactly as training saw its examples.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from niche.errors import ModelError
from niche.hardware import bound_kernel_caches, detect_hardware, one_thread
from niche.head import mean_pool
from niche.models import load_model, prepare_for_inference
from niche.serve import decode_attention, multilora
from niche.serve.base import (
    BASE_ADAPTER,
    DEFAULT_MAX_QUEUE,
    EngineCore,
    Generation,
)
from niche.serve.kvcache import BatchKVCache, is_plain
from niche.specialist import load_answer_head
from niche.tagger import Tagger

log = logging.getLogger(__name__)


MIN_CACHED_PREFIX = 16  # tokens; shorter shared prefixes are not worth a cache entry


@dataclass(frozen=True)
class PrefixCache:
    tokens: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values of shape [1, heads, len, dim]


class _HeadsRead(Exception):
    """Raised by the last hook a classification pass needs: the layers after it are not run."""


class TorchEngine(EngineCore):
    """Base model plus specialists' adapters; requests for any of them are decoded together in one batch.

    Head specialists (label heads and taggers) answer in their admission step: one forward pass of their rows up to
    the deepest layer their heads read, that layer's output through each row's head; they never join the decoding
    batch.
    """

    runs_label_heads = True

    def __init__(
        self,
        specialists_dir: Path,
        max_loaded: int = 8,
        max_batch_size: int = 16,
        max_wait_ms: float = 2.0,
        timeout_s: float = 120.0,
        stacked_lora: bool = True,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        super().__init__(specialists_dir, max_loaded, timeout_s, max_queue)
        bound_kernel_caches()  # a long-running server meets new prefill shapes for as long as it runs
        hardware = detect_hardware()
        # Every forward pass runs in the scheduler thread, on this many threads; the calling thread loads the model
        # on one, so that it creates no OpenMP team of its own to slow the scheduler's (`one_thread`).
        self.threads = torch.get_num_threads()
        with one_thread():
            self.model: Any = load_model(self.base, hardware.dtype, hardware.device).eval()
        self.vocab_size = self.model.config.vocab_size
        self.device = hardware.device
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait = max_wait_ms / 1000
        self.admitting: list[Generation] = []  # newcomers being prefilled
        self.cache: Any = None  # a BatchKVCache, or for models with other cache layers the batch's own cache
        self.attention_mask: torch.Tensor | None = None  # of a cache other than BatchKVCache, which keeps its own
        self.model_config = self.model.config
        # Decode steps on CPU attend without copying the cache per query head; prefill keeps the default.
        self.decode_attention = decode_attention.register() if self.device == "cpu" else None
        self.steps = 0
        self.peak_rows = 0
        self._active_adapter: str | None = None
        self.use_stacked_lora = stacked_lora
        self.stacked_lora = False
        self.lora_state = multilora.MultiLoraState()
        self.prefixes: dict[str, PrefixCache] = {}  # adapter -> keys/values of its prompts' common prefix
        self.last_prompts: dict[str, list[int]] = {}
        self.heads: dict[str, tuple[int, Any, list[str]]] = {}  # adapter -> (layer, LabelHead or Tagger, labels)
        self._scheduler = threading.Thread(target=self._schedule, name="niche-scheduler", daemon=True)
        self._scheduler.start()

    # ---- adapters ---------------------------------------------------------------------------------------------

    def _load_adapter(self, name: str, adapter: str) -> None:
        from peft import PeftModel

        directory, manifest = self.specialists[name]
        if not isinstance(self.model, PeftModel):
            self.model = PeftModel.from_pretrained(self.model, str(directory), adapter_name=adapter).eval()
            self._active_adapter = adapter
        else:
            self.model.load_adapter(str(directory), adapter_name=adapter)
        if manifest.task.head is not None:
            head = load_answer_head(directory, manifest, self.model_config.hidden_size, self.device)
            self.heads[adapter] = (manifest.task.head.layer, head, list(manifest.task.labels or []))

    def _adapter_ready(self, adapter: str) -> None:
        # After the eviction, so the model always keeps an adapter and stays a PeftModel.
        self._prepare_for_inference(adapter)
        self._adapters_changed()

    def _prepare_for_inference(self, adapter: str) -> None:
        """Adapter weights in the base's dtype (PEFT keeps them in fp32, so every layer would cast its input
        back and forth), and every weight flagged requires_grad (`prepare_for_inference`: PEFT froze them)."""
        dtype = self.model.get_base_model().dtype
        for name, parameter in self.model.named_parameters():
            if f".{adapter}." in f"{name}." and parameter.dtype != dtype:
                parameter.data = parameter.data.to(dtype)
        prepare_for_inference(self.model)

    def _retire(self, name: str) -> bool:
        """Take `name` out of service; its adapter is deleted once no running row decodes with it."""
        if name not in self.loaded:
            return False
        self.retired.add(self.loaded.pop(name))
        self._delete_retired()
        log.info("unloaded specialist %s", name)
        return True

    def _delete_retired(self) -> None:
        for adapter in self.retired - self._busy_adapters():
            if set(self.model.peft_config) == {adapter}:
                # PEFT cannot load into a model whose last adapter was deleted: unwrap to the bare base instead.
                self.model = self.model.unload()
            else:
                with warnings.catch_warnings():  # PEFT warns when the active adapter goes; the next step sets one
                    warnings.simplefilter("ignore", UserWarning)
                    self.model.delete_adapter(adapter)
            self.retired.discard(adapter)
            self.heads.pop(adapter, None)
            self.adapter_revisions.pop(adapter, None)
            self.prefixes.pop(adapter, None)
            self.last_prompts.pop(adapter, None)
            self._adapters_changed()
            self._active_adapter = None  # PEFT activates another adapter of its choosing

    # ---- scheduling -----------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        torch.set_num_threads(self.threads)
        while not self._closed.is_set():
            try:
                self._gather(wait=not self.rows)
                # no_grad, not inference_mode: adapters loaded here must stay ordinary tensors that PEFT can
                # later re-flag when another adapter is deleted outside this thread.
                with self.lock, torch.no_grad():
                    self._admit()
                    if self.rows:
                        self._decode_step()
            except Exception as error:  # noqa: BLE001 - one failed step fails its rows, never the server
                log.exception("batch step failed")
                with self.lock:
                    for row in [*self.rows, *self.admitting]:
                        if not row.finished:
                            row.events.put(error)
                            row.finished = True
                    self.rows, self.admitting, self.cache, self.attention_mask = [], [], None, None
                    self._delete_retired()

    def _gather(self, wait: bool) -> None:
        """Move queued requests to `waiting`; when idle, block for one and give companions `max_wait` to join."""
        if wait and not self.waiting:
            try:
                self.waiting.append(self.incoming.get(timeout=0.2))
            except queue.Empty:
                return
            until = time.monotonic() + self.max_wait
            while len(self.waiting) < self.max_batch_size and (remaining := until - time.monotonic()) > 0:
                try:
                    self.waiting.append(self.incoming.get(timeout=remaining))
                except queue.Empty:
                    break
        while True:
            try:
                self.waiting.append(self.incoming.get_nowait())
            except queue.Empty:
                return

    def _admit(self) -> None:
        if not self.waiting or (self.rows and not self._can_join()):
            return
        admitted: list[Generation] = []
        busy = self._busy_adapters()
        decoding = self.decoding()
        for generation in list(self.waiting):
            if decoding + len(admitted) >= self.max_batch_size:
                break
            if generation.cancelled.is_set() or self._expired(generation):
                self.waiting.remove(generation)
                continue
            try:
                adapter = self._acquire(generation.name, busy)
            except Exception as error:  # noqa: BLE001 - a broken adapter fails its own requests only
                generation.events.put(ModelError(f"cannot load specialist {generation.name!r}: {error}"))
                self.waiting.remove(generation)
                continue
            if adapter is None:
                continue  # every adapter slot is decoding other requests; it waits for one to free
            generation.adapter = adapter
            generation.revision = self.adapter_revisions.get(adapter, "")
            busy.add(adapter)
            admitted.append(generation)
            self.waiting.remove(generation)
        if admitted:
            self.admitting = admitted  # no longer waiting, not yet rows: a failed prefill must fail them too
            classified = [generation for generation in admitted if generation.adapter in self.heads]
            if classified:
                self._classify(classified)
            decoding = [generation for generation in admitted if generation.adapter not in self.heads]
            if decoding:
                self._prefill(decoding)
            self.admitting = []

    def _can_join(self) -> bool:
        """Only a batch of plain (full-attention) caches takes newcomers while it runs: a sliding-window layer
        cannot be left-padded."""
        return isinstance(self.cache, BatchKVCache)

    def _forward(self, adapters: list[str], **inputs: Any) -> Any:
        """One timed forward pass where row i uses adapter adapters[i]; decode steps use `decode_attention`."""
        phase = "decode" if inputs["input_ids"].shape[1] == 1 and inputs.get("past_key_values") else "prefill"
        started = time.perf_counter()
        inputs |= {"use_cache": True, "logits_to_keep": 1}
        attention = self.model_config._attn_implementation
        # Only a cache of full-attention layers is what the decode attention reads: a sliding-window layer keeps
        # the window's keys alone and needs the model's own windowed mask.
        cache = inputs.get("past_key_values")
        full_attention = isinstance(cache, BatchKVCache) or (cache is not None and is_plain(cache))
        if phase == "decode" and self.decode_attention and full_attention:
            self.model_config._attn_implementation = self.decode_attention
            inputs["attention_mask"] = decode_attention.additive_mask(inputs["attention_mask"], self.model.dtype)
        try:
            output = self._run(adapters, inputs)
        finally:
            self.model_config._attn_implementation = attention
        self.forward_seconds[phase] += time.perf_counter() - started
        self.forward_calls[phase] += 1
        return output

    def _run(self, adapters: list[str], inputs: dict[str, Any]) -> Any:
        """Through the stacked multi-LoRA layers when the adapters allow it, otherwise through PEFT: a batch on
        one adapter runs it as the active adapter, any other mix goes through PEFT's mixed-adapter path (which
        also serves base-only batches: PEFT's disable_adapter() walks every module and costs more than the
        forward pass itself)."""
        from peft import PeftModel

        distinct = set(adapters)
        if not isinstance(self.model, PeftModel):
            output = self.model(**inputs)
        elif self.stacked_lora:
            state = self.lora_state
            state.select([state.slots.get(adapter, 0) for adapter in adapters], self.device)
            try:
                output = self.model.get_base_model()(**inputs)
            finally:
                state.clear()
        elif len(distinct) == 1 and BASE_ADAPTER not in distinct:
            if self._active_adapter != adapters[0]:
                self.model.set_adapter(adapters[0])
                self._active_adapter = adapters[0]
            output = self.model(**inputs)
        else:
            output = self.model(**inputs, adapter_names=adapters)
        return output

    def _adapters_changed(self) -> None:
        from peft import PeftModel

        self.stacked_lora = False
        if not isinstance(self.model, PeftModel):
            return
        if self.use_stacked_lora and multilora.supports(self.model):
            multilora.rebuild(self.model, self.lora_state)
            self.stacked_lora = True
        else:
            multilora.restore(self.model)

    def _classify(self, rows: list[Generation]) -> None:
        """Answer head rows: one right-padded pass up to the deepest layer their heads read, each row's label head
        on the mean of its layer's output (`niche.head`), or its tagger on that output (`niche.tagger`), as in
        training."""

        width = max(len(row.prompt) for row in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, : len(row.prompt)] = torch.tensor(row.prompt)
            mask[index, : len(row.prompt)] = 1
        layers = {self.heads[row.adapter][0] for row in rows}
        outputs = self._layer_outputs([row.adapter for row in rows], input_ids, mask, layers)
        mask = mask.to(self.device)
        for index, row in enumerate(rows):
            if row.cancelled.is_set() or self._expired(row):
                row.finished = True
                continue
            layer, head, labels = self.heads[row.adapter]
            hidden = outputs[layer][index : index + 1]
            if isinstance(head, Tagger):
                answer = head.answer(hidden, head.inputs(self.tokenizer, row.source_text))
                row.text = json.dumps(answer, ensure_ascii=False)
            else:
                row.text = labels[int(head(mean_pool(hidden, mask[index : index + 1])).argmax())]
            row.generated = [0]  # one answer, counted as one completion token
            self._finish(row, "stop")

    def _layer_outputs(
        self, adapters: list[str], input_ids: torch.Tensor, mask: torch.Tensor, layers: set[int]
    ) -> dict[int, torch.Tensor]:
        """The outputs of the given decoder layers (1-based) for one batch; no layer past the deepest runs."""
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        decoder_layers = base.get_decoder().layers
        captured: dict[int, torch.Tensor] = {}
        deepest = max(layers)

        def capture(layer: int) -> Any:
            def hook(module: Any, arguments: Any, output: Any) -> None:
                captured[layer] = output[0] if isinstance(output, tuple) else output
                if layer == deepest:
                    raise _HeadsRead

            return hook

        handles = [decoder_layers[layer - 1].register_forward_hook(capture(layer)) for layer in layers]
        started = time.perf_counter()
        try:
            self._run(adapters, {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)})
        except _HeadsRead:
            pass
        finally:
            for handle in handles:
                handle.remove()
        self.forward_seconds["prefill"] += time.perf_counter() - started
        self.forward_calls["prefill"] += 1
        return captured

    def _prefill(self, admitted: list[Generation]) -> None:
        """Run the newcomers' prompts and add their caches to the batch's. A prompt that starts with its
        adapter's cached prefix (typically the system prompt) only runs its remaining tokens; the others run
        together, left-padded."""
        # Taken before any pass runs: the fresh prompts' pass may replace their adapter's cached prefix.
        cached = {id(generation): self._cached_prefix(generation) for generation in admitted}
        reusing = [generation for generation in admitted if cached[id(generation)] is not None]
        fresh = [generation for generation in admitted if cached[id(generation)] is None]
        joining = [(fresh, *self._prefill_fresh(fresh))] if fresh else []
        if reusing:
            prefixes = [cached[id(generation)] for generation in reusing]
            joining.append((reusing, *self._prefill_after_prefix(reusing, prefixes)))
        self._join(joining)

    def _join(self, joining: list[tuple[list[Generation], Any, torch.Tensor]]) -> None:
        """Newcomers that are still decoding take free rows of the batch's cache (requests that ended on their
        first token never join)."""
        if self.cache is None and all(is_plain(cache) for _, cache, _ in joining):
            self.cache = BatchKVCache(self.max_batch_size)
        if not isinstance(self.cache, BatchKVCache):
            for generations, _, _ in joining:
                self.rows.extend(generations)
            self._merge([(cache, mask) for _, cache, mask in joining])
            self._drop_finished()
            return
        for generations, cache, mask in joining:
            keep = [index for index, generation in enumerate(generations) if not generation.finished]
            if not keep:
                continue
            for position, index in zip(self.cache.admit(cache, mask, keep), keep):
                if position == len(self.rows):
                    self.rows.append(generations[index])
                else:
                    self.rows[position] = generations[index]
        if not self.rows:
            self.cache = None
        self._delete_retired()

    def _prefill_fresh(self, fresh: list[Generation]) -> tuple[Any, torch.Tensor]:
        width = max(len(generation.prompt) for generation in fresh)
        input_ids = torch.full((len(fresh), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(fresh), width), dtype=torch.long)
        for row, generation in enumerate(fresh):
            input_ids[row, width - len(generation.prompt) :] = torch.tensor(generation.prompt)
            mask[row, width - len(generation.prompt) :] = 1
        output = self._forward(
            [generation.adapter for generation in fresh],
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(self.device),
        )
        for row, generation in enumerate(fresh):
            self._remember_prefix(generation, output.past_key_values, row, width - len(generation.prompt))
        self._advance(fresh, output.logits[:, -1].float())
        return output.past_key_values, mask.to(self.device)

    def _cached_prefix(self, generation: Generation) -> PrefixCache | None:
        cached = self.prefixes.get(generation.adapter)
        if cached is None or len(generation.prompt) <= len(cached.tokens):
            return None
        return cached if tuple(generation.prompt[: len(cached.tokens)]) == cached.tokens else None

    def _remember_prefix(self, generation: Generation, cache: Any, row: int, start: int) -> None:
        """Cache the prompt's longest common prefix with the adapter's previous prompt, if long enough. Keys and
        values at a position depend only on the tokens up to it, so they can be reused for any prompt that
        starts with the same tokens."""
        previous = self.last_prompts.get(generation.adapter, [])
        self.last_prompts[generation.adapter] = generation.prompt
        shared = 0
        # At most all but the last token: a repeated prompt then reuses everything but one position.
        for mine, theirs in zip(generation.prompt[:-1], previous):
            if mine != theirs:
                break
            shared += 1
        # A sliding-window layer keeps only the window's keys, not the prefix's: such models reuse no prefix.
        if shared < MIN_CACHED_PREFIX or not is_plain(cache):
            return
        end = start + shared
        self.prefixes[generation.adapter] = PrefixCache(
            tuple(generation.prompt[:shared]),
            [
                (layer.keys[row : row + 1, :, start:end].clone(), layer.values[row : row + 1, :, start:end].clone())
                for layer in cache.layers
            ],
        )

    def _prefill_after_prefix(self, reusing: list[Generation], prefixes: list[PrefixCache]) -> tuple[Any, torch.Tensor]:
        """One pass over the newcomers' uncached suffixes, each row on top of its adapter's cached prefix. Row i
        is laid out [pad][prefix_i][pad][suffix_i]: cached prefixes left-padded to the longest, suffixes
        left-padded to the longest; the attention mask hides both pads and positions count real tokens only."""
        from transformers.cache_utils import DynamicCache

        cached_width = max(len(prefix.tokens) for prefix in prefixes)
        suffixes = [generation.prompt[len(prefix.tokens) :] for generation, prefix in zip(reusing, prefixes)]
        width = max(len(suffix) for suffix in suffixes)
        input_ids = torch.full((len(reusing), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(reusing), cached_width + width), dtype=torch.long)
        positions = torch.zeros((len(reusing), width), dtype=torch.long)
        for row, (prefix, suffix) in enumerate(zip(prefixes, suffixes)):
            input_ids[row, width - len(suffix) :] = torch.tensor(suffix)
            mask[row, cached_width - len(prefix.tokens) : cached_width] = 1
            mask[row, cached_width + width - len(suffix) :] = 1
            positions[row, width - len(suffix) :] = torch.arange(len(prefix.tokens), len(prefix.tokens) + len(suffix))
        cache = DynamicCache()
        for index in range(len(prefixes[0].layers)):
            keys = torch.cat([left_pad(prefix.layers[index][0], cached_width, -2) for prefix in prefixes])
            values = torch.cat([left_pad(prefix.layers[index][1], cached_width, -2) for prefix in prefixes])
            cache.update(keys, values, index)
        mask = mask.to(self.device)
        output = self._forward(
            [generation.adapter for generation in reusing],
            input_ids=input_ids.to(self.device),
            attention_mask=mask,
            position_ids=positions.to(self.device),
            past_key_values=cache,
        )
        self.prefix_hits += len(reusing)
        self._advance(reusing, output.logits[:, -1].float())
        return output.past_key_values, mask

    def _merge(self, joining: list[tuple[Any, torch.Tensor]]) -> None:
        """Append the newcomers' caches (in the order their rows joined) to a cache that is not a BatchKVCache,
        in one copy."""
        parts = ([(self.cache, self.attention_mask)] if self.cache is not None else []) + joining
        if len(parts) == 1:
            self.cache, self.attention_mask = parts[0]
            return
        length = max(mask.shape[1] for _, mask in parts)
        merged = parts[0][0]
        for index, layer in enumerate(merged.layers):
            layer.keys = torch.cat([left_pad(cache.layers[index].keys, length, -2) for cache, _ in parts])
            layer.values = torch.cat([left_pad(cache.layers[index].values, length, -2) for cache, _ in parts])
        self.cache = merged
        self.attention_mask = torch.cat([left_pad(mask, length, -1) for _, mask in parts])

    def _decode_step(self) -> None:
        if isinstance(self.cache, BatchKVCache):
            for source, target in self.cache.compact():
                self.rows[target] = self.rows[source]
            del self.rows[self.cache.rows :]
            mask = self.cache.begin_step()
        else:
            assert self.attention_mask is not None
            mask = self.attention_mask = F.pad(self.attention_mask, (0, 1), value=1)
        output = self._forward(
            [row.adapter for row in self.rows],
            input_ids=torch.tensor([[row.generated[-1]] for row in self.rows], device=self.device),
            attention_mask=mask,
            position_ids=torch.tensor(
                [[len(row.prompt) + len(row.generated) - 1] for row in self.rows], device=self.device
            ),
            past_key_values=self.cache,
        )
        if isinstance(self.cache, BatchKVCache):
            self.cache.end_step()
        self.steps += 1
        self.peak_rows = max(self.peak_rows, len(self.rows))
        self._advance(self.rows, output.logits[:, -1].float())
        self._drop_finished()

    def _drop_finished(self) -> None:
        keep = [index for index, row in enumerate(self.rows) if not row.finished]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.attention_mask = [], None, None
        elif isinstance(self.cache, BatchKVCache):
            # Their rows become holes, filled by the next newcomers or compacted before the next step.
            self.cache.release([index for index, row in enumerate(self.rows) if row.finished])
            del self.rows[self.cache.rows :]
        else:
            assert self.attention_mask is not None
            index = torch.tensor(keep, device=self.device)
            mask = self.attention_mask[index]
            # Columns only the departed rows attended to are cut, so the cache tracks the live rows' length; not
            # from a cache with sliding-window layers, which hold the window's last positions and place their
            # mask by absolute position.
            first = int(mask.any(0).nonzero()[0]) if is_plain(self.cache) else 0
            for layer in self.cache.layers:
                layer.keys = layer.keys[index, :, first:]
                layer.values = layer.values[index, :, first:]
            self.attention_mask = mask[:, first:]
            self.rows = [self.rows[position] for position in keep]
        self._delete_retired()


def left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Zero-pad `tensor` on the left along `dim` (-1 or -2) up to `length`."""
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    return F.pad(tensor, (missing, 0) if dim == -1 else (0, 0, missing, 0))
