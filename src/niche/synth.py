"""`niche synth`: more training rows from a teacher model, every one validated, resumable, costed.

Strategies (prompt templates the user can override, Python `str.format` fields in braces):
- `variations`: new inputs in the style of a few seed examples of one label, balanced over the label set
  (label tasks), or new input/answer pairs in the style of the seeds (other tasks);
- `documents`: question/answer pairs answerable from passages of the user's domain documents; each row keeps
  its passage as `context`, for retrieval-backed specialists.

The teacher is any OpenAI-compatible endpoint (vLLM, Ollama, OpenAI, `niche serve`) or a local model run in
process (`local:NAME`: a catalog base, a model directory or a specialist directory). Where the teacher honours
`response_format` with a JSON schema (OpenAI, vLLM, `niche serve`), replies are constrained to the expected
shape; otherwise the prompt asks for it and malformed replies are rejected.

Every candidate row is validated (parses, label in the label set, length bounds, not a near duplicate of a
seed, a test row or an earlier synthetic row, optional LLM-as-judge score) and written either to the output or
to the rejects file with its reason. Requests run concurrently up to a limit, with retries and backoff on
429/5xx/timeouts. Output is append-only and keyed by request id: a rerun (after a crash or Ctrl-C) continues
where the last finished request left off.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from niche.data.examples import Example
from niche.data.formats import load_examples, read_examples
from niche.data.minhash import NearDuplicateIndex
from niche.errors import ConfigError, NicheError
from niche.io import write_json_atomic, write_text_atomic
from niche.rag import chunk_text, document_paths, read_document

Strategy = Literal["variations", "documents"]
SEED_REJECTS = "seeds"  # request id under which malformed seed rows are kept in the rejects file

VARIATIONS_LABEL_PROMPT = """You write training data for a text classifier.
The labels are: {labels}.
Here are examples labelled "{label}":
{examples}

Write {count} new, realistic inputs that a person could send and that clearly belong to the label "{label}".
Vary wording, length and detail; do not copy the examples.
Answer with JSON only: {{"items": [{{"text": "...", "label": "{label}"}}, ...]}}"""

VARIATIONS_PAIR_PROMPT = """You write training data for an assistant.
Here are examples of inputs and the expected answers:
{examples}

Write {count} new input/answer pairs of the same kind and quality; do not copy the examples.
Answer with JSON only: {{"items": [{{"input": "...", "output": "..."}}, ...]}}"""

DOCUMENTS_PROMPT = """You write training data for an assistant that answers from documents.
Passage:
\"\"\"
{passage}
\"\"\"

Write {count} questions a user could ask that this passage answers, each with a correct, self-contained answer
taken from the passage.
Answer with JSON only: {{"items": [{{"question": "...", "answer": "..."}}, ...]}}"""

JUDGE_PROMPT = """Rate this training example for a {task} task from 1 (wrong or useless) to 5 (correct and useful).
{example}
Answer with JSON only: {{"score": N, "reason": "..."}}"""


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
        try:
            import openai
        except ImportError as error:
            raise ConfigError("an OpenAI-compatible teacher needs the openai package: pip install openai") from error
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
        from niche.hardware import detect_hardware
        from niche.models import load_model, load_tokenizer, prepare_for_inference, resolve_base
        from niche.specialist import MANIFEST_NAME, load_specialist

        hardware = detect_hardware()
        if (Path(spec) / MANIFEST_NAME).is_file():
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


@dataclass(frozen=True)
class SynthSettings:
    n: int = 100
    strategy: Strategy = "variations"
    per_request: int = 5
    examples_per_prompt: int = 5
    temperature: float = 0.9
    max_tokens: int = 768
    concurrency: int = 4
    seed: int = 0
    min_chars: int = 3
    max_chars: int = 2000
    near_duplicate_threshold: float = 0.8
    prompt_template: str | None = None
    judge: bool = False
    min_judge_score: int = 4
    price_input_per_million: float = 0.0
    price_output_per_million: float = 0.0
    passage_chars: int = 1500
    max_rounds: int = 3
    output_schema: dict[str, Any] | None = None  # answers must be JSON that validates against it

    def __post_init__(self) -> None:
        if self.n < 1 or self.per_request < 1 or self.concurrency < 1:
            raise ConfigError("synth: n, per_request and concurrency must be at least 1")
        if self.strategy not in ("variations", "documents"):
            raise ConfigError(f"strategy: expected variations or documents, got {self.strategy!r}")


@dataclass
class SynthRequest:
    request_id: str
    prompt: str
    label: str | None
    seed_ids: list[str]
    passage: str | None = None


@dataclass
class SynthReport:
    teacher: str
    strategy: str
    requests: int = 0
    requests_failed: int = 0
    retries: int = 0
    generated: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    labels: dict[str, int] = field(default_factory=dict)
    resumed_requests: int = 0
    seed_problems: int = 0
    errors: list[str] = field(default_factory=list)


def _row_id(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _examples_block(examples: list[Example], label_task: bool) -> str:
    if label_task:
        return "\n".join(f"- {example.input_text}" for example in examples)
    return "\n".join(
        f"- input: {json.dumps(example.input_text)}\n  output: {json.dumps(example.response)}" for example in examples
    )


def plan_requests(
    seeds: list[Example], documents: list[str], settings: SynthSettings, start: int = 0, count: int | None = None
) -> tuple[list[SynthRequest], dict[str, Any] | None, list[str]]:
    """Requests number start..start+count-1, each a deterministic function of its number (so a rerun
    recognises finished ones), the reply schema, and the label set."""
    count = -(-settings.n // settings.per_request) if count is None else count
    labels = sorted({example.label for example in seeds if example.label is not None})
    requests: list[SynthRequest] = []
    if settings.strategy == "documents":
        overlap = min(150, settings.passage_chars // 4)
        passages = [
            passage for document in documents for passage in chunk_text(document, settings.passage_chars, overlap)
        ]
        if not passages:
            raise ConfigError("strategy documents: give --documents files with text")
        template = settings.prompt_template or DOCUMENTS_PROMPT
        for index in range(start, start + count):
            passage = passages[index % len(passages)]
            prompt = template.format(passage=passage, count=settings.per_request)
            requests.append(SynthRequest(_row_id("documents", index, passage), prompt, None, [], passage))
        text = {"type": "string", "minLength": 1, "maxLength": settings.max_chars}
        return requests, _items_schema({"question": text, "answer": text}, settings.per_request), labels
    if not seeds:
        raise ConfigError("strategy variations: the seeds file has no examples")
    label_task = bool(labels) and all(example.label is not None for example in seeds)
    by_label = {label: [example for example in seeds if example.label == label] for label in labels}
    for index in range(start, start + count):
        label = labels[index % len(labels)] if label_task else None  # balanced: labels take turns
        pool = by_label[label] if label is not None else seeds
        chosen = random.Random(f"{settings.seed}-{index}").sample(pool, min(settings.examples_per_prompt, len(pool)))
        fields = {
            "labels": ", ".join(labels),
            "label": label or "",
            "examples": _examples_block(chosen, label_task),
            "count": settings.per_request,
        }
        template = settings.prompt_template or (VARIATIONS_LABEL_PROMPT if label_task else VARIATIONS_PAIR_PROMPT)
        seed_ids = [example.source for example in chosen]
        requests.append(
            SynthRequest(_row_id("variations", index, label, seed_ids), template.format(**fields), label, seed_ids)
        )
    text = {"type": "string", "minLength": 1, "maxLength": settings.max_chars}
    item = {"text": text, "label": {"enum": labels}} if label_task else {"input": text, "output": text}
    return requests, _items_schema(item, settings.per_request), labels


def _items_schema(item_properties: dict[str, Any], count: int) -> dict[str, Any]:
    """{"items": [...]} with at most `count` items, each with exactly these properties."""
    return {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": count,
                "items": {
                    "type": "object",
                    "properties": item_properties,
                    "required": list(item_properties),
                    "additionalProperties": False,
                },
            }
        },
        "required": ["items"],
        "additionalProperties": False,
    }


def parse_items(text: str) -> list[dict[str, Any]]:
    """Rows from a reply: {"items": [...]}, a JSON list, or JSON lines; code fences are tolerated."""
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        rows = []
        for line in text.splitlines():
            line = line.strip().rstrip(",")
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        if not rows:
            raise ValueError("reply is not JSON") from None
        value = rows
    if isinstance(value, dict):
        value = value.get("items", [value])
    if not isinstance(value, list):
        raise ValueError("reply holds no list of items")
    return [item for item in value if isinstance(item, dict)]


def candidate_row(item: dict[str, Any], request: SynthRequest, strategy: str) -> dict[str, Any]:
    """A generated item in niche's row shape (label, prompt/completion or chat with context); KeyError if a
    field is missing."""
    if strategy == "documents":
        return {
            "messages": [
                {"role": "user", "content": str(item["question"])},
                {"role": "assistant", "content": str(item["answer"])},
            ],
            "context": request.passage,
        }
    if request.label is not None:
        return {"text": str(item["text"]), "label": str(item["label"])}
    return {"prompt": str(item["input"]), "completion": str(item["output"])}


def _row_text(row: dict[str, Any]) -> str:
    if "messages" in row:
        return row["messages"][0]["content"]
    return row.get("text") or row.get("prompt") or ""


def _row_answer(row: dict[str, Any]) -> str:
    if "messages" in row:
        return row["messages"][-1]["content"]
    return row.get("label") or row.get("completion") or ""


class Validator:
    """Checks one candidate at a time against the label set, length bounds and everything seen so far."""

    def __init__(self, settings: SynthSettings, labels: list[str], seeds: list[Example], tests: list[Example]) -> None:
        self.settings = settings
        self.labels = set(labels)
        self.index = NearDuplicateIndex(settings.near_duplicate_threshold)
        self.lock = threading.Lock()
        self.seed_signatures = self.index.hasher.signatures([example.input_text for example in seeds])
        self.test_signatures = self.index.hasher.signatures([example.input_text for example in tests])
        self.accepted_signatures: list[np.ndarray] = []

    def add_accepted(self, texts: list[str]) -> None:
        if texts:
            self.accepted_signatures.extend(self.index.hasher.signatures(texts))

    def check(self, row: dict[str, Any]) -> tuple[str, str] | None:
        """None if the row is acceptable (and then remembered), else (kind, reason) to reject it."""
        text, answer = _row_text(row).strip(), _row_answer(row).strip()
        if self.labels and "label" in row and row["label"] not in self.labels:
            return "label", f"label {row['label']!r} is not in the label set"
        if not self.settings.min_chars <= len(text) <= self.settings.max_chars:
            return "length", f"input length {len(text)} outside [{self.settings.min_chars}, {self.settings.max_chars}]"
        if not answer or len(answer) > self.settings.max_chars:
            return "length", f"answer length {len(answer)} outside [1, {self.settings.max_chars}]"
        if self.settings.output_schema is not None:
            import jsonschema

            try:
                jsonschema.validate(json.loads(answer), self.settings.output_schema)
            except json.JSONDecodeError as error:
                return "schema", f"answer is not JSON: {error.msg}"
            except jsonschema.ValidationError as error:
                return "schema", f"answer does not match the schema: {error.message}"
        signature = self.index.hasher.signatures([text])
        for name, reference in (("seed", self.seed_signatures), ("test", self.test_signatures)):
            if self.index.matches(signature, reference)[0]:
                return f"near_duplicate_{name}", f"near duplicate of a {name} row"
        with self.lock:
            if self.accepted_signatures and self.index.matches(signature, np.stack(self.accepted_signatures))[0]:
                return "near_duplicate_synthetic", "near duplicate of another synthetic row"
            self.accepted_signatures.append(signature[0])
        return None


def judge_score(teacher: Teacher, row: dict[str, Any], task: str, seed: int) -> tuple[int | None, str, TeacherReply]:
    example = json.dumps(
        {
            key: value
            for key, value in row.items()
            if key in ("text", "label", "prompt", "completion", "messages", "context")
        },
        ensure_ascii=False,
    )
    reply = teacher.complete(
        JUDGE_PROMPT.format(task=task, example=example),
        temperature=0,
        max_tokens=96,
        seed=seed,
        schema={
            "type": "object",
            "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}, "reason": {"type": "string"}},
            "required": ["score", "reason"],
        },
    )
    try:
        verdict = parse_items(reply.text)[0]
        return int(verdict["score"]), str(verdict.get("reason", "")), reply
    except (ValueError, KeyError, IndexError, TypeError):
        return None, "judge reply is not a score", reply


class SynthOutput:
    """The append-only output, rejects and progress files; a rerun keeps only what finished requests wrote."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.rejects = self.out.with_name(self.out.stem + ".rejects.jsonl")
        self.progress = self.out.with_name(self.out.stem + ".progress.jsonl")
        self.lock = threading.Lock()

    def resume(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """(finished requests, their accepted rows, their rejected rows); rows of unfinished requests and a
        torn last line are dropped so the rerun writes them once."""
        finished = {row["request_id"]: row for row in _read_jsonl(self.progress)}
        kept: list[list[dict[str, Any]]] = []
        for path in (self.out, self.rejects):
            # Malformed seed rows are not kept: every run reports them afresh.
            rows = [row for row in _read_jsonl(path) if row.get("request_id") in finished]
            write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            kept.append(rows)
        write_text_atomic(self.progress, "".join(json.dumps(row) + "\n" for row in finished.values()))
        return finished, kept[0], kept[1]

    def write(
        self, accepted: list[dict[str, Any]], rejected: list[dict[str, Any]], progress: dict[str, Any] | None
    ) -> None:
        with self.lock:
            for path, rows in (
                (self.out, accepted),
                (self.rejects, rejected),
                (self.progress, [progress] if progress else []),
            ):
                if rows:
                    with path.open("a", encoding="utf-8") as handle:
                        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
                        handle.flush()
                        os.fsync(handle.fileno())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash; its request is not in the progress file, so it reruns
    return rows


def synthesize(
    seeds_path: Path | None,
    teacher: Teacher,
    out: Path,
    settings: SynthSettings | None = None,
    *,
    documents: list[Path] | None = None,
    test_path: Path | None = None,
    on_request: Callable[[int, int], None] | None = None,
) -> SynthReport:
    """Generate, validate and append rows to `out` until the plan is done; returns (and writes) the report."""
    settings = settings or SynthSettings()
    seed_result = read_examples(seeds_path) if seeds_path else None
    seeds = seed_result.examples if seed_result else []
    seed_problems = [
        {
            "request_id": SEED_REJECTS,
            "kind": "bad_seed",
            "source": f"{problem.path}:{problem.line}",
            "reason": problem.message,
            "raw": problem.raw,
        }
        for problem in (seed_result.problems if seed_result else [])
    ]
    tests = load_examples(test_path).examples if test_path else []
    texts = [read_document(path) for path in document_paths(documents)] if documents else []
    requests, schema, labels = plan_requests(seeds, texts, settings)
    output = SynthOutput(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    finished, accepted_before, rejected_before = output.resume()
    output.write([], seed_problems, None)
    report = SynthReport(teacher.name, settings.strategy, resumed_requests=len(finished))
    for progress in finished.values():
        report.prompt_tokens += progress["prompt_tokens"]
        report.completion_tokens += progress["completion_tokens"]
        report.retries += progress.get("retries", 0)
    validator = Validator(settings, labels, seeds, tests)
    validator.add_accepted([_row_text(row) for row in accepted_before])
    accepted_count = Counter(row.get("label") for row in accepted_before)
    rejected_count = Counter(row["kind"] for row in rejected_before)
    report.generated = len(accepted_before) + len(rejected_before)
    task = "classification" if labels else "question answering" if settings.strategy == "documents" else "generation"

    def run(request: SynthRequest, number: int) -> tuple[list[dict], list[dict], dict]:
        reply = teacher.complete(
            request.prompt,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            seed=settings.seed + number,
            schema=schema,
        )
        tokens = [reply.prompt_tokens, reply.completion_tokens, reply.retries]
        provenance = {
            "source": "synthetic",
            "teacher": teacher.name,
            "strategy": settings.strategy,
            "seed_ids": request.seed_ids,
            "request_id": request.request_id,
        }
        accepted: list[dict] = []
        rejected: list[dict] = []
        try:
            items = parse_items(reply.text)
        except ValueError as error:
            rejected.append({"kind": "malformed_reply", "reason": str(error), "raw": reply.text[:2000], **provenance})
            items = []
        for position, item in enumerate(items):
            row_id = _row_id(request.request_id, position)
            try:
                row = candidate_row(item, request, settings.strategy)
            except KeyError as error:
                rejected.append(
                    {
                        "id": row_id,
                        "kind": "malformed_item",
                        "reason": f"missing field {error}",
                        "raw": item,
                        **provenance,
                    }
                )
                continue
            problem = validator.check(row)
            if problem is None and settings.judge:
                score, why, judged = judge_score(teacher, row, task, settings.seed + number)
                tokens[0] += judged.prompt_tokens
                tokens[1] += judged.completion_tokens
                if score is None or score < settings.min_judge_score:
                    problem = "judge", f"score {score} < {settings.min_judge_score}: {why}"
                else:
                    row["judge_score"] = score
            if problem is None:
                accepted.append({"id": row_id, **row, **provenance})
            else:
                rejected.append({"id": row_id, "kind": problem[0], "reason": problem[1], "row": row, **provenance})
        progress = {
            "request_id": request.request_id,
            "prompt_tokens": tokens[0],
            "completion_tokens": tokens[1],
            "retries": tokens[2],
        }
        return accepted, rejected, progress

    # Rejected rows leave the output short of n: further rounds ask for the difference, a bounded number of times.
    start = 0
    for _ in range(settings.max_rounds):
        report.requests += len(requests)
        with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
            futures = {
                pool.submit(run, request, start + index): request
                for index, request in enumerate(requests)
                if request.request_id not in finished
            }
            for done, future in enumerate(as_completed(futures), start=1):
                try:
                    accepted, rejected, progress = future.result()
                except TeacherError as error:
                    report.requests_failed += 1
                    if len(report.errors) < 20:
                        report.errors.append(str(error))
                    continue
                output.write(accepted, rejected, progress)
                report.generated += len(accepted) + len(rejected)
                report.prompt_tokens += progress["prompt_tokens"]
                report.completion_tokens += progress["completion_tokens"]
                report.retries += progress["retries"]
                accepted_count.update(row.get("label") for row in accepted)
                rejected_count.update(row["kind"] for row in rejected)
                if on_request:
                    on_request(done, len(futures))
        missing = settings.n - sum(accepted_count.values())
        start += len(requests)
        if missing <= 0:
            break
        requests, _, _ = plan_requests(seeds, texts, settings, start, -(-missing // settings.per_request))
    report.accepted = sum(accepted_count.values())
    report.rejected = dict(rejected_count)
    report.seed_problems = len(seed_problems)
    report.labels = {str(label): count for label, count in accepted_count.items() if label is not None}
    report.cost = round(
        (
            report.prompt_tokens * settings.price_input_per_million
            + report.completion_tokens * settings.price_output_per_million
        )
        / 1e6,
        6,
    )
    write_json_atomic(out.with_name(out.stem + ".report.json"), asdict(report))
    write_text_atomic(out.with_name(out.stem + ".report.md"), report_markdown(report))
    return report


def report_markdown(report: SynthReport) -> str:
    lines = [
        "# Synthetic data report",
        "",
        f"Teacher: {report.teacher}; strategy: {report.strategy}",
        "",
        "| | |",
        "|---|---|",
        f"| requests planned | {report.requests} (resumed from an earlier run: {report.resumed_requests}) |",
        f"| requests failed after retries | {report.requests_failed} |",
        f"| malformed seed rows (in the rejects file) | {report.seed_problems} |",
        f"| retries | {report.retries} |",
        f"| rows generated | {report.generated} |",
        f"| accepted | {report.accepted} |",
        f"| rejected | {sum(report.rejected.values())} |",
        f"| tokens (prompt / completion) | {report.prompt_tokens} / {report.completion_tokens} |",
        f"| cost | {report.cost:.4f} |",
    ]
    if report.rejected:
        lines += ["", "## Rejected by reason", "", "| reason | rows |", "|---|---|"]
        lines += [
            f"| {reason} | {count} |" for reason, count in sorted(report.rejected.items(), key=lambda pair: -pair[1])
        ]
    if report.labels:
        lines += ["", "## Accepted per label", "", "| label | rows |", "|---|---|"]
        lines += [f"| {label} | {count} |" for label, count in sorted(report.labels.items())]
    if report.errors:
        lines += ["", "## Errors", ""] + [f"- {error}" for error in report.errors]
    return "\n".join(lines) + "\n"
