"""Fixtures: a per-session model cache, the real SmolLM2 tokenizer, and tiny random Llama bases built from a config."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Set before any test module imports huggingface_hub, which reads it once at import.
os.environ["HF_HUB_OFFLINE"] = "1"
LABELS = ["billing", "outage", "security"]


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Never touch the user's cache, never reach a model hub."""
    os.environ["NICHE_CACHE_DIR"] = str(tmp_path_factory.mktemp("niche-cache"))
    # Every train, eval and ladder run is tracked, as for users, into a store of the test session's own.
    tracking_dir = tmp_path_factory.mktemp("mlflow")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tracking_dir / 'mlflow.db'}"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smollm2_base():
    from niche.models import resolve_base

    return resolve_base("smollm2-135m")


@pytest.fixture(scope="session")
def tokenizer(smollm2_base):
    from niche.models import load_tokenizer

    return load_tokenizer(smollm2_base)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer and chat template, saved as a local base."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        # No pad_token_id: Llama would zero the embedding of pad == eos, pinning its logit at 0.
        # Embeddings large enough that LoRA alone can make one token confident (the final norm is frozen).
        pad_token_id=None,
        initializer_range=0.2,
    )
    directory = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def chat_completion(model: str, content: str, prompt_tokens: int, completion_tokens: int, number: int = 0) -> dict:
    """The body of an OpenAI chat completion, for the scripted teachers and judges that tests serve."""
    return {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def ticket_rows(count: int, offset: int = 0) -> list[dict]:
    """A toy label task whose label is readable from one keyword, so tiny models can learn it in a few steps.

    Every ticket number carries each label once: were the label a function of the number (number % 3), a tiny
    model could learn the digits instead of the keyword and fail on other numbers. Held-out splits keep one-
    and two-digit numbers: a longer number shifts the keyword's position, which a 2-layer random model does not
    generalise over."""
    texts = {"billing": "invoice charged twice", "outage": "site is down again", "security": "phishing email received"}
    return [
        {"text": f"ticket {offset + index // 3}: {texts[LABELS[index % 3]]}", "label": LABELS[index % 3]}
        for index in range(count)
    ]


@pytest.fixture
def label_data(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", ticket_rows(24)),
        "validation": write_jsonl(tmp_path / "validation.jsonl", ticket_rows(6, offset=40)),
        "test": write_jsonl(tmp_path / "test.jsonl", ticket_rows(9, offset=60)),
    }


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_base: Path, label_data: dict[str, Path]):
    """A niche config that trains the tiny base for a few steps on the toy label task."""
    from niche.config import load_config

    def build(*overrides: str):
        return load_config(
            None,
            [
                f"base={tiny_base}",
                f"output_dir={tmp_path / 'out'}",
                "name=toy",
                f"data.train={label_data['train']}",
                f"data.validation={label_data['validation']}",
                f"data.test={label_data['test']}",
                "prompt.system_prompt=Route the ticket to one of: {labels}.",
                "training.max_steps=4",
                "training.batch_size=4",
                "training.eval_every=2",
                "training.learning_rate=0.01",
                "training.objective=generate",
                "lora.r=4",
                "lora.alpha=8",
                "lora.dropout=0.0",
                *overrides,
            ],
        )

    return build


@contextlib.contextmanager
def running(app, **options) -> Iterator[str]:
    """Serve `app` on a free loopback port with the uvicorn settings `niche serve` uses (header limit and
    timeouts; `options` override them); yields its base URL."""
    import uvicorn

    from niche.serve.http import uvicorn_config

    port = free_port()
    instance = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, **options))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instance.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, seconds: float, what: str) -> None:
    """Poll `url`/health until it answers; fail (with the process's output when it kept one) if the process
    exits or `seconds` pass first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.communicate()[0] if process.stdout else ""
                pytest.fail(f"{what} did not start:\n{output}")
            time.sleep(0.25)


EXTRACTION_VALUES = {
    "food": ["pizza", "sushi", "noodles", "tacos"],
    "city": ["paris", "oslo", "lima", "rome"],
    "time": ["seven am", "noon", "six pm", "midnight"],
}


def extraction_rows(count: int, offset: int = 0) -> list[dict]:
    """A toy JSON extraction task: an intent (a closed set) and slots copied from the request, each intent with
    slots of its own (order: food; weather: city; alarm: time, and sometimes a city)."""
    rows = []
    for index in range(offset, offset + count):
        food, city, time_ = (values[index % len(values)] for values in EXTRACTION_VALUES.values())
        kind = index % 3
        if kind == 0:
            text, answer = f"order {food} for me please", {"intent": "order", "slots": {"food": food}}
        elif kind == 1:
            text, answer = f"what is the weather in {city}", {"intent": "weather", "slots": {"city": city}}
        elif index % 2:
            text, answer = f"wake me at {time_} in {city}", {"intent": "alarm", "slots": {"time": time_, "city": city}}
        else:
            text, answer = f"set an alarm for {time_}", {"intent": "alarm", "slots": {"time": time_}}
        rows.append({"prompt": text, "completion": json.dumps(answer)})
    return rows


@pytest.fixture
def extraction_data(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_jsonl(tmp_path / "extract-train.jsonl", extraction_rows(36)),
        "validation": write_jsonl(tmp_path / "extract-validation.jsonl", extraction_rows(9, offset=40)),
        "test": write_jsonl(tmp_path / "extract-test.jsonl", extraction_rows(9, offset=60)),
    }


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Ray cluster on loopback: a head with 2 CPUs, started for the session and stopped after it (only its
    own processes); yields its address."""
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from ray_cluster import local_ray_cluster

    with local_ray_cluster(cpus=2, temp_dir=tmp_path_factory.mktemp("ray")) as address:
        yield address
