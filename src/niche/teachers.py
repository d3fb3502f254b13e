"""Teacher models: any OpenAI-compatible endpoint (vLLM, Ollama, OpenAI, `niche serve`) or a local model run in
process (`local:NAME`: a catalog base, a model directory or a specialist directory), behind one small interface.
Used by synthesis, the LLM-as-judge, teacher-scored rewards and distillation from a teacher's answers."""

from __future__ import annotations

import os
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from niche.artifact import is_specialist
from niche.config import SynthSettings
from niche.errors import ConfigError, NicheError, require_extra
from niche.hardware import detect_hardware
from niche.models import load_model, load_tokenizer, prepare_for_inference, resolve_base
from niche.specialist import load_specialist


class TeacherError(NicheError):
    """The teacher could not be reached or kept failing after retries."""


@dataclass
class TeacherReply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0


class Teacher(Protocol):
    name: str

    def complete(
        self,
        prompt: str,
        *,
        temperature: float,
        max_tokens: int,
        seed: int,
        schema: dict[str, Any] | None,
        system: str | None = None,
    ) -> TeacherReply: ...


class OpenAITeacher:
    """An OpenAI-compatible chat endpoint; retries 429, 5xx, timeouts and connection errors with backoff."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        structured: bool = True,
    ) -> None:
        require_extra("train", ("openai",), "an OpenAI-compatible teacher")
        import openai

        self.openai = openai
        self.client = openai.OpenAI(
            base_url=base_url, api_key=os.environ.get(api_key_env) or "unused", timeout=timeout_s, max_retries=0
        )
        self.name = f"{base_url}#{model}"
        self.model = model
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.structured = structured

    def complete(
        self,
        prompt: str,
        *,
        temperature: float,
        max_tokens: int,
        seed: int,
        schema: dict[str, Any] | None,
        system: str | None = None,
    ) -> TeacherReply:
        options: dict[str, Any] = {}
        if schema is not None and self.structured:
            options["response_format"] = {"type": "json_schema", "json_schema": {"name": "rows", "schema": schema}}
        retries = 0
        while True:
            try:
                response = self.client.chat.completions.create(
                    model=self.model,
                    messages=_messages(prompt, system),
                    temperature=temperature,
                    max_tokens=max_tokens,
                    seed=seed,
                    **options,
                )
                usage = response.usage
                return TeacherReply(
                    response.choices[0].message.content or "",
                    usage.prompt_tokens if usage else 0,
                    usage.completion_tokens if usage else 0,
                    retries,
                )
            except (self.openai.APITimeoutError, self.openai.APIConnectionError, self.openai.RateLimitError) as error:
                failure: Exception = error
                wait = _retry_after(error)
            except self.openai.APIStatusError as error:
                if error.status_code < 500:
                    raise TeacherError(
                        f"teacher {self.name} refused the request ({error.status_code}): {error}"
                    ) from error
                failure, wait = error, _retry_after(error)
            if retries >= self.max_retries:
                raise TeacherError(f"teacher {self.name} failed after {retries} retries: {failure}") from failure
            # Exponential backoff with jitter, or the server's Retry-After when it gives one.
            time.sleep(wait if wait is not None else self.backoff_s * 2**retries * (0.5 + random.random()))
            retries += 1


def _messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def _retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return min(float(value), 60.0) if value is not None else None
    except ValueError:
        return None


class LocalTeacher:
    """A model run in this process: a catalog base (local:smollm2-135m), a model directory or a specialist."""

    def __init__(self, spec: str) -> None:
        hardware = detect_hardware()
        if is_specialist(Path(spec)):
            self.model, self.tokenizer, _ = load_specialist(Path(spec), hardware.device, hardware.dtype)
        else:
            base = resolve_base(spec)
            self.tokenizer = load_tokenizer(base)
            self.model = prepare_for_inference(load_model(base, hardware.dtype, hardware.device).eval())
        self.name = f"local:{spec}"
        self.lock = threading.Lock()

    def complete(
        self,
        prompt: str,
        *,
        temperature: float,
        max_tokens: int,
        seed: int,
        schema: dict[str, Any] | None,
        system: str | None = None,
    ) -> TeacherReply:
        import torch

        ids = self.tokenizer.apply_chat_template(
            _messages(prompt, system), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"].to(self.model.device)
        with self.lock, torch.no_grad():
            torch.manual_seed(seed)
            output = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        completion = output[0, ids.shape[1] :]
        text = self.tokenizer.decode(completion, skip_special_tokens=True)
        return TeacherReply(text, ids.shape[1], len(completion))


def make_teacher(spec: str, model: str | None, **options: Any) -> Teacher:
    """`local:NAME` runs in process; anything else is an OpenAI-compatible base URL (with `model`)."""
    if spec.startswith("local:"):
        return LocalTeacher(spec.removeprefix("local:"))
    if not re.match(r"https?://", spec):
        raise ConfigError(f"--teacher {spec!r}: expected an http(s) base URL or local:NAME")
    if not model:
        raise ConfigError("--teacher-model: an OpenAI-compatible teacher needs the model name to ask for")
    return OpenAITeacher(spec, model, **options)


def teacher_of(settings: SynthSettings) -> Teacher:
    """The teacher a `synth` section names, with its endpoint options (a local model takes none)."""
    if settings.teacher is None:
        raise ConfigError("synth.teacher: name a teacher (an OpenAI-compatible base URL, or local:NAME)")
    if settings.teacher.startswith("local:"):
        return make_teacher(settings.teacher, None)
    options = {
        "api_key_env": settings.api_key_env,
        "timeout_s": settings.timeout_s,
        "max_retries": settings.max_retries,
        "structured": settings.structured,
    }
    return make_teacher(settings.teacher, settings.model, **options)
