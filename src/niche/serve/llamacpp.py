"""`niche serve --engine llamacpp`: the same API on llama.cpp, one GGUF base with specialists as GGUF LoRAs.

On a CPU, llama.cpp decodes several times faster than transformers at batch 1. The base is the F16 GGUF of
the specialists' base (converted once and cached); each specialist's adapter is converted to a GGUF LoRA on
first use (cached by the adapter's content hash). Requests run one at a time on one llama.cpp context: the
request's adapter is set (or cleared, for the base), the prompt is evaluated, and tokens are sampled by niche
(so label and JSON-schema constraints, stop strings and streaming behave as on the torch engine).

The KV cache is kept between requests on the same adapter: a prompt that shares a token prefix with what the
context last evaluated (typically the specialist's system prompt) only evaluates the rest. Keys and values at a
position depend only on the tokens before it and on the adapter, so this gives the answer a fresh context
gives. A request on any other adapter (a reloaded specialist has a new adapter name) starts from an empty
cache: one adapter's state never reaches another's answer (llama.cpp's own server once had exactly that bug).
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import torch

from niche.errors import ModelError, require_llama_cpp
from niche.gguf import last_logits, lora_gguf, shared_base_gguf
from niche.serve.base import BASE_ADAPTER, DEFAULT_MAX_QUEUE, EngineCore, Generation

log = logging.getLogger(__name__)


class LlamaCppEngine(EngineCore):
    def __init__(
        self,
        specialists_dir: Path,
        max_loaded: int = 8,
        timeout_s: float = 120.0,
        context_length: int = 2048,
        threads: int | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        require_llama_cpp("--engine llamacpp")
        from llama_cpp import Llama

        super().__init__(specialists_dir, max_loaded, timeout_s, max_queue)
        self.base_gguf = shared_base_gguf(self.base)
        self.llm = Llama(
            model_path=str(self.base_gguf),
            n_ctx=context_length,
            n_threads=threads or os.cpu_count() or 1,
            verbose=False,
        )
        self.context_length = context_length
        self.vocab_size = self.llm.n_vocab()
        self.lora_handles: dict[str, Any] = {}  # adapter name -> llama_adapter_lora pointer
        self._applied: str | None = None
        self._cached_adapter: str | None = None  # the adapter the context's KV cache was computed with
        self._scheduler = threading.Thread(target=self._serve_requests, name="niche-llamacpp", daemon=True)
        self._scheduler.start()

    # ---- adapters ---------------------------------------------------------------------------------------------

    def _load_adapter(self, name: str, adapter: str) -> None:
        import llama_cpp

        path = lora_gguf(self.specialists[name][0], self.base)
        handle = llama_cpp.llama_adapter_lora_init(self.llm.model, str(path).encode())
        if not handle:
            raise ModelError(f"llama.cpp could not load the LoRA {path} for {name!r}")
        self.lora_handles[adapter] = handle

    def _retire(self, name: str) -> bool:
        if name not in self.loaded:
            return False
        self.retired.add(self.loaded.pop(name))
        self._delete_retired()
        return True

    def _delete_retired(self) -> None:
        import llama_cpp

        for adapter in self.retired - self._busy_adapters():
            if self._applied == adapter:
                self._apply(BASE_ADAPTER)
            llama_cpp.llama_adapter_lora_free(self.lora_handles.pop(adapter))
            self.adapter_revisions.pop(adapter, None)
            self.retired.discard(adapter)

    def _apply(self, adapter: str) -> None:
        """Set the request's adapter on the context, alone (or none, for the base)."""
        import llama_cpp

        if self._applied == adapter:
            return
        if adapter == BASE_ADAPTER:
            status = llama_cpp.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.lora_handles[adapter])
            status = llama_cpp.llama_set_adapters_lora(self.llm.ctx, handles, 1, (ctypes.c_float * 1)(1.0))
        if status != 0:
            raise ModelError(f"llama.cpp refused to apply adapter {adapter} (status {status})")
        self._applied = adapter

    # ---- requests ---------------------------------------------------------------------------------------------

    def _serve_requests(self) -> None:
        while not self._closed.is_set():
            try:
                generation = self.incoming.get(timeout=0.2)
            except queue.Empty:
                continue
            if generation.cancelled.is_set() or self._expired(generation):
                continue
            try:
                self._run(generation)
            except Exception as error:  # noqa: BLE001 - one failed request never stops the engine
                log.exception("llama.cpp request failed")
                generation.events.put(error)
                self._cached_adapter = None  # a failed evaluation may have left the cache half-written
            finally:
                with self.lock:
                    self.rows = []
                    self._delete_retired()

    def _run(self, generation: Generation) -> None:
        with self.lock:
            adapter = self._acquire(generation.name)
            if adapter is None:  # cannot happen with one request at a time, kept for max_loaded=0 misuse
                raise ModelError("no adapter slot is free")
            generation.adapter = adapter
            generation.revision = self.adapter_revisions.get(adapter, "")
            self.rows = [generation]
            self._apply(adapter)
            started = time.perf_counter()
            self.llm.eval(generation.prompt[self._reuse_prefix(adapter, generation.prompt) :])
            self._timed("prefill", started)
        while not generation.finished:
            with self.lock:
                self._advance([generation], torch.from_numpy(last_logits(self.llm))[None])
                if generation.finished:
                    break
                started = time.perf_counter()
                self.llm.eval([generation.generated[-1]])
                self._timed("decode", started)

    def _reuse_prefix(self, adapter: str, prompt: list[int]) -> int:
        """Keep the KV cache of the prompt's longest prefix that the context already evaluated on the same
        adapter and drop the rest; returns how many prompt tokens are cached. Another adapter starts empty."""
        shared = 0
        if self._cached_adapter == adapter:
            evaluated = self.llm.input_ids[: self.llm.n_tokens]
            # At most all but the last token: its logits must be computed afresh to sample the first answer token.
            for mine, theirs in zip(prompt[:-1], evaluated):
                if mine != theirs:
                    break
                shared += 1
        # llama.cpp may refuse a partial removal (recurrent models): then evaluate the whole prompt.
        if shared and not self.llm._ctx.kv_cache_seq_rm(-1, shared, -1):
            shared = 0
        if shared:
            self.prefix_hits += 1
            self.llm.n_tokens = shared
        else:
            self.llm.reset()
        self._cached_adapter = adapter
        return shared

    def forget_prefix(self) -> None:
        """Empty the KV cache: the next request evaluates its whole prompt."""
        with self.lock:
            self.llm.reset()
            self._cached_adapter = None

    def _timed(self, phase: str, started: float) -> None:
        self.forward_seconds[phase] += time.perf_counter() - started
        self.forward_calls[phase] += 1

    def close(self) -> None:
        super().close()
        with self.lock:
            self.retired |= set(self.loaded.values())
            self.loaded.clear()
            self._delete_retired()
            self.llm.close()
