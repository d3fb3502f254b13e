"""The OpenAI-compatible HTTP API: /v1/models, /v1/chat/completions, /v1/completions, /health.

Errors use OpenAI's shape ({"error": {"message", "type", "param", "code"}}) and status codes, and a bad
request never takes the server down.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, Field

from niche.errors import NicheError
from niche.serve.engine import (
    Completion,
    EngineCore,
    Generation,
    RequestTimeout,
    SamplingParams,
    ServerBusy,
    UnknownModelError,
)
from niche.serve.router import DomainRouter

log = logging.getLogger("niche.serve")


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class JsonSchemaFormat(BaseModel):
    name: str = "response"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `text`, `json_object` and `json_schema`, and niche's `label`: decode only answers from a label
    specialist's label set."""

    type: Literal["text", "json_object", "json_schema", "label"]
    json_schema: JsonSchemaFormat | None = None


class SamplingFields(BaseModel):
    model: str
    max_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = Field(False, description="Keep decoding past end-of-turn up to max_tokens (vLLM's extension).")
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")
    response_format: ResponseFormat | None = None

    def sampling(self) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        # No response_format: the specialist's own (a JSON specialist's stored schema); "text" asks for free text.
        response, schema = ("auto" if self.response_format is None else "text"), None
        if self.response_format is not None and self.response_format.type != "text":
            response = "label" if self.response_format.type == "label" else "json"
            if self.response_format.type == "json_schema":
                if self.response_format.json_schema is None:
                    raise NicheError("response_format.json_schema: required when type is 'json_schema'")
                schema = self.response_format.json_schema.schema_
        return SamplingParams(
            self.max_tokens or 256, self.temperature, self.top_p, stop, self.seed, response, schema, self.ignore_eos
        )


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(SamplingFields):
    prompt: str


def error_response(
    status: int, message: str, error_type: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


@dataclass(frozen=True)
class ServeSettings:
    api_keys: frozenset[str] = frozenset()
    max_body_bytes: int = 1 << 20


class Metrics:
    """Prometheus series for one app (its own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "niche_requests_total", "HTTP requests", ["path", "model", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "niche_request_seconds",
            "Request latency",
            ["path", "model"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.tokens = Counter("niche_tokens_total", "Tokens processed", ["model", "kind"], registry=self.registry)
        self.loaded = Gauge("niche_loaded_adapters", "Specialist adapters in memory", registry=self.registry)


class EngineCollector:
    """The engine's own counters, read at scrape time."""

    def __init__(self, engine: EngineCore) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        engine = self.engine
        seconds = CounterMetricFamily("niche_forward_seconds", "Time in model forward passes", labels=["phase"])
        calls = CounterMetricFamily("niche_forward_calls", "Model forward passes", labels=["phase"])
        for phase in engine.forward_seconds:
            seconds.add_metric([phase], engine.forward_seconds[phase])
            calls.add_metric([phase], engine.forward_calls[phase])
        yield seconds
        yield calls
        yield CounterMetricFamily(
            "niche_prefix_cache_hits", "Prompts whose cached prefix was reused", value=engine.prefix_hits
        )
        yield GaugeMetricFamily("niche_batch_rows", "Requests decoding in the running batch", value=engine.decoding())
        yield GaugeMetricFamily(
            "niche_waiting_requests", "Requests waiting to join the batch", value=len(engine.waiting)
        )


PUBLIC_PATHS = {"/health", "/metrics"}
AUTO_MODEL = "auto"


def create_app(
    engine: EngineCore, settings: ServeSettings | None = None, router: DomainRouter | None = None
) -> FastAPI:
    settings = settings or ServeSettings()
    metrics = Metrics()
    metrics.registry.register(EngineCollector(engine))
    app = FastAPI(title="niche serve", version="1")
    app.state.metrics = metrics

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        if settings.api_keys and request.url.path not in PUBLIC_PATHS:
            token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if token not in settings.api_keys:
                return error_response(
                    401,
                    "missing or invalid API key (Authorization: Bearer KEY)",
                    "authentication_error",
                    code="invalid_api_key",
                )
        length = request.headers.get("content-length")
        too_large = f"request body of {{}} bytes exceeds the limit of {settings.max_body_bytes}"
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            return error_response(413, too_large.format(length), "invalid_request_error")
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            # A chunked body states no length: count it as it arrives, and stop reading past the limit.
            received = bytearray()
            async for chunk in request.stream():
                received += chunk
                if len(received) > settings.max_body_bytes:
                    return error_response(413, too_large.format(f"over {len(received)}"), "invalid_request_error")
            request._body = bytes(received)  # Starlette hands the read body on to the endpoint
        response = await call_next(request)
        model = getattr(request.state, "model", "")
        seconds = time.perf_counter() - started
        metrics.requests.labels(request.url.path, model, str(response.status_code)).inc()
        metrics.latency.labels(request.url.path, model).observe(seconds)
        log.info(
            json.dumps(
                {
                    "event": "request",
                    "method": request.method,
                    "path": request.url.path,
                    "model": model,
                    "status": response.status_code,
                    "latency_ms": round(seconds * 1000, 1),
                }
            )
        )
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(part) for part in first["loc"] if part != "body") or None
        return error_response(400, f"{param or 'body'}: {first['msg']}", "invalid_request_error", param)

    @app.exception_handler(UnknownModelError)
    async def unknown_model(request: Request, error: UnknownModelError) -> JSONResponse:
        return error_response(404, str(error), "invalid_request_error", "model", "model_not_found")

    @app.exception_handler(RequestTimeout)
    async def timed_out(request: Request, error: RequestTimeout) -> JSONResponse:
        return error_response(504, str(error), "timeout_error", code="timeout")

    @app.exception_handler(ServerBusy)
    async def busy(request: Request, error: ServerBusy) -> JSONResponse:
        return error_response(503, str(error), "server_error", code="server_busy")

    @app.exception_handler(NicheError)
    async def niche_error(request: Request, error: NicheError) -> JSONResponse:
        return error_response(400, str(error), "invalid_request_error")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(error).__name__}: {error}", "server_error")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "base": engine.base_spec, "loaded": engine.loaded_specialists()}

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        metrics.loaded.set(len(engine.loaded_specialists()))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/specialists/{name}/{action}")
    def admin(name: str, action: Literal["load", "reload", "unload"]) -> dict[str, Any]:
        """Load, reload (re-read from disk after retraining) or unload one specialist without a restart."""
        if action == "reload":
            engine.refresh(name)
        elif action == "load":
            engine.load(name)
        else:
            engine.unload(name)
        return {"specialist": name, "action": action, "loaded": engine.loaded_specialists()}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "niche"}
                for name in [*engine.model_names(), *([AUTO_MODEL] if router else [])]
            ],
        }

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        messages = [message.model_dump() for message in body.messages]
        route_request(body, messages, request)
        return respond(engine, metrics, body, messages, chat=True)

    @app.post("/v1/completions", response_model=None)
    def completions(body: CompletionRequest, request: Request) -> Any:
        # A completion prompt is the user's turn, rendered through the model's template like any chat message.
        messages = [{"role": "user", "content": body.prompt}]
        route_request(body, messages, request)
        return respond(engine, metrics, body, messages, chat=False)

    def route_request(body: SamplingFields, messages: list[dict[str, str]], request: Request) -> None:
        """Replace "auto" by the specialist the router picks; the response's `model` then names it."""
        if body.model == AUTO_MODEL:
            if router is None:
                raise UnknownModelError("model 'auto' needs routing, which this server runs without (--routing)")
            last_user = next(message["content"] for message in reversed(messages) if message["role"] == "user")
            route = router.route(last_user)
            log.info(json.dumps({"event": "route", "model": route.model, "score": round(route.score, 4)}))
            body.model = route.model
        request.state.model = body.model

    return app


def respond(
    engine: EngineCore, metrics: Metrics, body: SamplingFields, messages: list[dict[str, str]], chat: bool
) -> Any:
    # Bad requests (unknown model, a schema that cannot compile, too long) fail here, before a stream starts.
    generation = engine.submit(body.model, messages, body.sampling())
    request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if body.stream:
        pieces = counted(generation.stream(), metrics, body.model)
        return StreamingResponse(
            sse_events(pieces, request_id, created, body.model, chat, lambda: fingerprint_of(generation)),
            media_type="text/event-stream",
        )
    completion = generation.result()
    count_tokens(metrics, body.model, completion)
    choice: dict[str, Any] = {"index": 0, "finish_reason": completion.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": completion.text}
    else:
        choice |= {"text": completion.text, "logprobs": None}
    return {
        "id": request_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": body.model,
        "system_fingerprint": fingerprint_of(generation),
        "choices": [choice],
        "usage": usage(completion),
    }


def fingerprint_of(generation: Generation) -> str:
    """OpenAI's system_fingerprint: here, which version of the specialist answered (e.g. `triage@v3`)."""
    return f"{generation.name}@{generation.revision}" if generation.revision else generation.name


def count_tokens(metrics: Metrics, model: str, completion: Completion) -> None:
    metrics.tokens.labels(model, "prompt").inc(completion.prompt_tokens)
    metrics.tokens.labels(model, "completion").inc(completion.completion_tokens)


def counted(pieces: Iterator[str | Completion], metrics: Metrics, model: str) -> Iterator[str | Completion]:
    for piece in pieces:
        if isinstance(piece, Completion):
            count_tokens(metrics, model, piece)
        yield piece


def usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


def sse_events(
    pieces: Iterator[str | Completion],
    request_id: str,
    created: int,
    model: str,
    chat: bool,
    fingerprint: Callable[[], str],
) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with [DONE]."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(delta_text: str | None, finish: str | None, extra: dict | None = None) -> str:
        if chat:
            choice = {
                "index": 0,
                "delta": {} if delta_text is None else {"content": delta_text},
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": delta_text or "", "finish_reason": finish, "logprobs": None}
        payload = {
            "id": request_id,
            "object": kind,
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint(),
            "choices": [choice],
            **(extra or {}),
        }
        return f"data: {json.dumps(payload)}\n\n"

    if chat:
        yield f"data: {json.dumps({'id': request_id, 'object': kind, 'created': created, 'model': model, 'choices': [{'index': 0, 'delta': {'role': 'assistant', 'content': ''}, 'finish_reason': None}]})}\n\n"
    try:
        for piece in pieces:
            if isinstance(piece, Completion):
                yield event(None, piece.finish_reason, {"usage": usage(piece)})
            else:
                yield event(piece, None)
    except Exception as error:  # noqa: BLE001 - the stream has started; report the error in-band and end it
        yield f"data: {json.dumps({'error': {'message': str(error), 'type': 'server_error'}})}\n\n"
    yield "data: [DONE]\n\n"
