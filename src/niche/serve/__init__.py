"""Serving: specialists behind an OpenAI-compatible API, many adapters on one base model.

Engines, by the name `niche serve --engine` takes, each in its own module behind the interface of
`niche.serve.base`: `torch` (continuous batching with stacked multi-LoRA, in this process:
`niche.serve.torch_engine`), `llamacpp` (a GGUF base with GGUF LoRAs, in this process: `niche.serve.llamacpp`)
and `vllm` (vLLM in its own process, from the command `niche.serve.vllm` builds, printed or launched).
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from niche.config import ServeSettings
from niche.errors import ConfigError, require_extra
from niche.serve.llamacpp import LlamaCppEngine
from niche.serve.registry import ChampionPoller
from niche.serve.torch_engine import TorchEngine
from niche.serve.vllm import VLLM_TEMPLATE_NOTE, VllmLauncher

IN_PROCESS_ENGINES = ("torch", "llamacpp")
ENGINES = (*IN_PROCESS_ENGINES, "vllm")


def create_engine(name: str, specialists: Path, **options: Any) -> Any:
    """An engine by name. Options the in-process engines take: max_loaded, timeout_s, max_queue (waiting
    requests past which a request gets 429); the torch engine also max_batch_size and max_wait_ms (ignored by
    llamacpp, which runs one request at a time). `vllm` returns the launcher of a vLLM server."""
    if name == "torch":
        return TorchEngine(specialists, **options)
    if name == "llamacpp":
        options.pop("max_batch_size", None)
        options.pop("max_wait_ms", None)
        return LlamaCppEngine(specialists, **options)
    if name == "vllm":
        return VllmLauncher(specialists, **options)
    raise ConfigError(f"--engine {name!r}: expected one of {', '.join(ENGINES)}")


def run_server(
    engine: Any,
    host: str,
    port: int,
    *,
    api_keys: frozenset[str] = frozenset(),
    max_body_bytes: int = 1 << 20,
    routing: bool = True,
    route_threshold: float = 0.4,
    registry_poll: float = 0.0,
    launch: bool = False,
    say: Callable[[str], None] = print,
    extend_app: Callable[[Any], None] | None = None,
) -> None:
    """Serve with `engine` until interrupted: an in-process engine behind niche's OpenAI-compatible app (with
    routing, keys and the registry poller as asked); the vLLM launcher prints its command, or runs it (`launch`).
    `extend_app` is called with the app before it serves (the studio mounts its page and API with it)."""
    if isinstance(engine, VllmLauncher):
        if launch:
            engine.launch(host, port)
        say(shlex.join(engine.command(host, port)))
        say(VLLM_TEMPLATE_NOTE)
        return
    # Request logs are JSON lines for log shippers, not rich-formatted text.
    require_extra("serve", ("fastapi", "uvicorn", "prometheus_client"), "niche serve")
    from niche.serve.app import ServeSettings, create_app  # fastapi is the serve extra's: checked just above
    from niche.serve.http import serve_http  # uvicorn, likewise

    request_log = logging.getLogger("niche.serve")
    request_log.propagate = False
    request_log.addHandler(logging.StreamHandler(sys.stderr))
    if registry_poll > 0:
        poller = ChampionPoller(engine, registry_poll)
        poller.check_once()
        poller.start()
    router = engine.router(route_threshold) if routing else None
    app = create_app(engine, ServeSettings(api_keys, max_body_bytes), router)
    if extend_app is not None:
        extend_app(app)
    say(f"serving {', '.join(engine.model_names())} on http://{host}:{port}/v1")
    serve_http(app, host, port)


def serve_specialists(
    specialists: Path,
    settings: ServeSettings,
    *,
    api_keys: frozenset[str] = frozenset(),
    launch: bool = False,
    say: Callable[[str], None] = print,
    extend_app: Callable[[Any], None] | None = None,
) -> None:
    """`niche serve`: the engine the `serve` settings name, served until interrupted (`extend_app`: see
    `run_server`)."""
    engine = create_engine(
        settings.engine,
        specialists,
        max_loaded=settings.max_loaded,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        timeout_s=settings.timeout,
        max_queue=settings.max_queue,
    )
    run_server(
        engine,
        settings.host,
        settings.port,
        api_keys=api_keys,
        max_body_bytes=settings.max_body_bytes,
        routing=settings.routing,
        route_threshold=settings.route_threshold,
        registry_poll=settings.registry_poll,
        launch=launch,
        say=say,
        extend_app=extend_app,
    )
