"""The OpenAI-compatible HTTP API: /v1/models, /v1/chat/completions, /v1/completions, /health.

Errors use OpenAI's shape ({"error": {"message", "type", "param", "code"}}) and status codes, and a bad
request never takes the server down. Top-level request fields this server does not know are accepted, as by
vLLM and OpenAI's other clones, but never silently: each request that sends some logs a warning naming them
and adds them to `niche_ignored_fields_total`.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import iterate_in_threadpool
from starlette.types import Receive, Scope, Send

from niche.errors import NicheError
from niche.serve.base import (
    Completion,
    EngineCore,
    Generation,
    QueueFull,
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


MAX_STOP_STRINGS = 16  # OpenAI allows 4; each one is searched for in the answer after every token
MAX_STOP_LENGTH = 256  # characters; a longer stop string also holds back that much streamed text
RETRY_AFTER_S = 1  # what a 429 tells the client to wait: the queue drains request by request


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    # Unknown fields are kept (to be reported, `ignored_fields`), not refused: clients send OpenAI's many options.
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = Field(False, description="Keep decoding past end-of-turn up to max_tokens (vLLM's extension).")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")
    response_format: ResponseFormat | None = None

    @field_validator("stop")
    @classmethod
    def bounded_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        strings = [stop] if isinstance(stop, str) else stop or []
        if len(strings) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are accepted, got {len(strings)}")
        if any(len(string) > MAX_STOP_LENGTH for string in strings):
            raise ValueError(f"a stop string may be at most {MAX_STOP_LENGTH} characters long")
        return stop

    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

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
    # Paths answered without a key: the studio's page and its files (its login form is on them).
    public_paths: frozenset[str] = frozenset({"/health", "/metrics"})
    public_prefixes: tuple[str, ...] = ()
    # Paths with a body limit of their own (the studio's data upload), as (path prefix, bytes).
    body_limits: tuple[tuple[str, int], ...] = ()

    def is_public(self, path: str) -> bool:
        return path in self.public_paths or path.startswith(self.public_prefixes)

    def body_limit(self, path: str) -> int:
        return next((limit for prefix, limit in self.body_limits if path.startswith(prefix)), self.max_body_bytes)

    def authorized(self, scope: dict[str, Any]) -> bool:
        """Whether the request's one Authorization header is exactly `Bearer KEY` for a configured key. The raw
        header bytes are compared (in constant time): decoding or trimming them first would let a key followed
        by, say, a non-breaking space through."""
        sent = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(sent) != 1:
            return False
        # No short-circuit: every key is compared, so timing does not tell which key came closer.
        matches = [hmac.compare_digest(sent[0], b"Bearer " + key.encode()) for key in self.api_keys]
        return any(matches)


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
        # No label per field name: a client could otherwise create a series per made-up name.
        self.ignored_fields = Counter(
            "niche_ignored_fields", "Unknown top-level request fields, accepted and ignored", registry=self.registry
        )
        self.live = LiveWindow()


class LiveWindow:
    """The last minutes of API traffic, for live views: request latencies and generated tokens, by time."""

    def __init__(self, keep_s: float = 300.0, max_events: int = 100_000) -> None:
        self.keep_s = keep_s
        self.requests: deque[tuple[float, float, int]] = deque(maxlen=max_events)  # (ended, seconds, status)
        self.tokens: deque[tuple[float, int]] = deque(maxlen=max_events)  # (when, completion tokens)
        self.total_requests = 0
        self.total_tokens = 0

    def request(self, seconds: float, status: int) -> None:
        now = time.monotonic()
        self.requests.append((now, seconds, status))
        self.total_requests += 1
        while self.requests and now - self.requests[0][0] > self.keep_s:
            self.requests.popleft()

    def generated(self, tokens: int) -> None:
        now = time.monotonic()
        self.tokens.append((now, tokens))
        self.total_tokens += tokens
        while self.tokens and now - self.tokens[0][0] > self.keep_s:
            self.tokens.popleft()

    def snapshot(self, rate_window_s: float = 10.0, latency_window_s: float = 60.0) -> dict[str, Any]:
        """Requests/s and tokens/s over the last `rate_window_s`, latency percentiles over `latency_window_s`."""
        now = time.monotonic()
        recent = [
            (ended, seconds, status) for ended, seconds, status in self.requests if now - ended <= latency_window_s
        ]
        latencies = sorted(seconds for ended, seconds, _ in recent)

        def percentile(share: float) -> float | None:
            if not latencies:
                return None
            return round(latencies[min(len(latencies) - 1, int(share * len(latencies)))] * 1000, 1)

        in_rate_window = [status for ended, _, status in recent if now - ended <= rate_window_s]
        tokens = sum(count for when, count in self.tokens if now - when <= rate_window_s)
        return {
            "requests_per_s": round(len(in_rate_window) / rate_window_s, 3),
            "errors_per_s": round(sum(status >= 500 for status in in_rate_window) / rate_window_s, 3),
            "tokens_per_s": round(tokens / rate_window_s, 1),
            "latency_ms": {"p50": percentile(0.5), "p95": percentile(0.95), "p99": percentile(0.99)},
            "latency_requests": len(latencies),
            "rate_window_s": rate_window_s,
            "latency_window_s": latency_window_s,
            "total_requests": self.total_requests,
            "total_tokens": self.total_tokens,
        }


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


AUTO_MODEL = "auto"


def create_app(
    engine: EngineCore, settings: ServeSettings | None = None, router: DomainRouter | None = None
) -> FastAPI:
    metrics = Metrics()
    metrics.registry.register(EngineCollector(engine))
    app = FastAPI(title="niche serve", version="1")
    app.state.metrics = metrics
    app.state.engine = engine
    app.state.router = router
    # Read per request: an extension mounted on the app (the studio) may widen what is public or accepted.
    app.state.serve_settings = settings or ServeSettings()

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        settings: ServeSettings = app.state.serve_settings
        path = request.url.path
        if settings.api_keys and not settings.is_public(path) and not settings.authorized(request.scope):
            return error_response(
                401,
                "missing or invalid API key (Authorization: Bearer KEY)",
                "authentication_error",
                code="invalid_api_key",
            )
        limit = settings.body_limit(path)
        length = request.headers.get("content-length")
        too_large = f"request body of {{}} bytes exceeds the limit of {limit}"
        if length and length.isdigit() and int(length) > limit:
            return error_response(413, too_large.format(length), "invalid_request_error")
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            # A chunked body states no length: count it as it arrives, and stop reading past the limit.
            received = bytearray()
            async for chunk in request.stream():
                received += chunk
                if len(received) > limit:
                    return error_response(413, too_large.format(f"over {len(received)}"), "invalid_request_error")
            request._body = bytes(received)  # Starlette hands the read body on to the endpoint
        response = await call_next(request)
        if route := getattr(request.state, "route", None):
            response.headers["x-niche-routed-to"] = route.model
            response.headers["x-niche-route-score"] = f"{route.score:.4f}"
        # call_next returns once the headers are out; a streamed answer is measured when its last byte is sent.
        response.body_iterator = measured(request, response.status_code, response.body_iterator, started)
        return response

    async def measured(request: Request, status: int, body: AsyncIterator[Any], started: float) -> AsyncIterator[Any]:
        try:
            async for chunk in body:
                yield chunk
        finally:
            model = getattr(request.state, "model", "")
            seconds = time.perf_counter() - started
            metrics.requests.labels(request.url.path, model, str(status)).inc()
            metrics.latency.labels(request.url.path, model).observe(seconds)
            if request.url.path.startswith("/v1/") and request.method == "POST":
                metrics.live.request(seconds, status)
            log.info(
                json.dumps(
                    {
                        "event": "request",
                        "method": request.method,
                        "path": request.url.path,
                        "model": model,
                        "status": status,
                        "latency_ms": round(seconds * 1000, 1),
                    }
                )
            )

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

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, error: QueueFull) -> JSONResponse:
        response = error_response(429, str(error), "rate_limit_error", code="queue_full")
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

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
        if ignored := body.ignored_fields():
            log.warning(json.dumps({"event": "ignored_fields", "path": request.url.path, "fields": ignored}))
            metrics.ignored_fields.inc(len(ignored))
        if body.model == AUTO_MODEL:
            if router is None:
                raise UnknownModelError("model 'auto' needs routing, which this server runs without (--routing)")
            last_user = next(message["content"] for message in reversed(messages) if message["role"] == "user")
            route = router.route(last_user)
            log.info(json.dumps({"event": "route", "model": route.model, "score": round(route.score, 4)}))
            body.model = route.model
            request.state.route = route  # sent back as x-niche-routed-to / x-niche-route-score headers
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
        events = sse_events(
            pieces, request_id, created, body.model, chat, lambda: fingerprint_of(generation), body.include_usage()
        )
        return GenerationStream(events, generation)
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


class GenerationStream(StreamingResponse):
    """A streamed answer whose request is cancelled the moment its client goes away, so the engine stops
    decoding it at its next token (and, on the torch engine, frees its batch row).

    Starlette cancels a stream whose client disconnected, but that cancellation usually lands in the response's
    `send`, outside the body iterator: a `finally` in the iterator then runs only when the abandoned generator
    is garbage-collected, and it sits in a reference cycle, so only the cyclic collector frees it (measured:
    0.5-0.7 s later per stream, never with the collector off; the engine decodes on for nobody meanwhile, and on
    llama.cpp, which runs one request at a time, every request queued behind waits for it). So the request is
    cancelled here: when the disconnect arrives, and whenever the response ends for any other reason (a failed
    send, the server shutting down)."""

    def __init__(self, events: Iterator[str], generation: Generation) -> None:
        # The events come from a blocking generator: each is read in a worker thread, which cancelling the
        # request wakes at once.
        super().__init__(iterate_in_threadpool(events), media_type="text/event-stream")
        self.generation = generation

    async def listen_for_disconnect(self, receive: Receive) -> None:
        await super().listen_for_disconnect(receive)
        self.generation.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.cancel()


def fingerprint_of(generation: Generation) -> str:
    """OpenAI's system_fingerprint: here, which version of the specialist answered (e.g. `triage@v3`)."""
    return f"{generation.name}@{generation.revision}" if generation.revision else generation.name


def count_tokens(metrics: Metrics, model: str, completion: Completion) -> None:
    metrics.tokens.labels(model, "prompt").inc(completion.prompt_tokens)
    metrics.tokens.labels(model, "completion").inc(completion.completion_tokens)
    metrics.live.generated(completion.completion_tokens)


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
    include_usage: bool = False,
) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with [DONE]. With `stream_options.include_usage`, as
    OpenAI does, one more chunk before [DONE] carries the usage and no choices. An error after the stream has
    started arrives as an event `{"error": {...}}`, then [DONE]."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        header = {"id": request_id, "object": kind, "created": created, "model": model}
        return f"data: {json.dumps(header | {'system_fingerprint': fingerprint(), 'choices': choices} | extra)}\n\n"

    def event(delta_text: str | None, finish: str | None) -> str:
        if chat:
            delta = {} if delta_text is None else {"content": delta_text}
            return chunk([{"index": 0, "delta": delta, "finish_reason": finish}])
        return chunk([{"index": 0, "text": delta_text or "", "finish_reason": finish, "logprobs": None}])

    if chat:
        yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    try:
        for piece in pieces:
            if isinstance(piece, Completion):
                yield event(None, piece.finish_reason)
                if include_usage:
                    yield chunk([], usage=usage(piece))
            else:
                yield event(piece, None)
    except Exception as error:  # noqa: BLE001 - the stream has started; report the error in-band and end it
        failure = {"message": f"{type(error).__name__}: {error}", "type": "server_error", "param": None, "code": None}
        yield f"data: {json.dumps({'error': failure})}\n\n"
    yield "data: [DONE]\n\n"
