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
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from niche.config import SynthSettings
from niche.data.documents import chunk_text, document_paths, read_document
from niche.data.examples import Example
from niche.data.formats import load_examples, read_examples
from niche.data.minhash import NearDuplicateIndex
from niche.errors import ConfigError
from niche.io import jsonl_text, write_json_atomic, write_jsonl_atomic, write_text_atomic
from niche.teachers import Teacher, TeacherError, TeacherReply

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
            write_jsonl_atomic(path, rows)
            kept.append(rows)
        write_jsonl_atomic(self.progress, finished.values())
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
                        handle.write(jsonl_text(rows))
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
    seed_problems = _seed_problem_rows(seed_result.problems if seed_result else [])
    tests = load_examples(test_path).examples if test_path else []
    texts = [read_document(path) for path in document_paths(documents)] if documents else []
    requests, schema, labels = plan_requests(seeds, texts, settings)
    output = SynthOutput(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    finished, accepted_before, rejected_before = output.resume()
    output.write([], seed_problems, None)
    report = SynthReport(teacher.name, settings.strategy, resumed_requests=len(finished))
    for progress in finished.values():
        _add_tokens(report, progress)
    report.generated = len(accepted_before) + len(rejected_before)
    validator = Validator(settings, labels, seeds, tests)
    validator.add_accepted([_row_text(row) for row in accepted_before])
    task = "classification" if labels else "question answering" if settings.strategy == "documents" else "generation"
    runner = RequestRunner(teacher, settings, schema, validator, task)
    accepted_count = Counter(row.get("label") for row in accepted_before)
    rejected_count = Counter(row["kind"] for row in rejected_before)
    # Rejected rows leave the output short of n: further rounds ask for the difference, a bounded number of times.
    start = 0
    for _ in range(settings.max_rounds):
        report.requests += len(requests)
        pending = [
            (start + index, request) for index, request in enumerate(requests) if request.request_id not in finished
        ]
        for accepted, rejected in _run_round(runner, pending, settings.concurrency, output, report, on_request):
            accepted_count.update(row.get("label") for row in accepted)
            rejected_count.update(row["kind"] for row in rejected)
        missing = settings.n - sum(accepted_count.values())
        start += len(requests)
        if missing <= 0:
            break
        requests, _, _ = plan_requests(seeds, texts, settings, start, -(-missing // settings.per_request))
    report.accepted = sum(accepted_count.values())
    report.rejected = dict(rejected_count)
    report.seed_problems = len(seed_problems)
    report.labels = {str(label): count for label, count in accepted_count.items() if label is not None}
    cost = report.prompt_tokens * settings.price_input_per_million
    report.cost = round((cost + report.completion_tokens * settings.price_output_per_million) / 1e6, 6)
    write_json_atomic(out.with_name(out.stem + ".report.json"), asdict(report))
    write_text_atomic(out.with_name(out.stem + ".report.md"), report_markdown(report))
    return report


def _seed_problem_rows(problems: list[Any]) -> list[dict[str, Any]]:
    """Malformed seed rows, as rejects kept under the SEED_REJECTS request id."""
    return [
        {
            "request_id": SEED_REJECTS,
            "kind": "bad_seed",
            "source": f"{problem.path}:{problem.line}",
            "reason": problem.message,
            "raw": problem.raw,
        }
        for problem in problems
    ]


def _add_tokens(report: SynthReport, progress: dict[str, Any]) -> None:
    report.prompt_tokens += progress["prompt_tokens"]
    report.completion_tokens += progress["completion_tokens"]
    report.retries += progress.get("retries", 0)


def _run_round(
    runner: RequestRunner,
    pending: list[tuple[int, SynthRequest]],
    concurrency: int,
    output: SynthOutput,
    report: SynthReport,
    on_request: Callable[[int, int], None] | None,
) -> Iterator[tuple[list[dict], list[dict]]]:
    """Run the round's requests concurrently, writing each one's rows as it finishes; yields them."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(runner.run, request, number) for number, request in pending]
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
            _add_tokens(report, progress)
            yield accepted, rejected
            if on_request:
                on_request(done, len(futures))


class RequestRunner:
    """One request to the teacher: its reply parsed into candidate rows, each validated (and judged, if asked)."""

    def __init__(
        self, teacher: Teacher, settings: SynthSettings, schema: dict[str, Any] | None, validator: Validator, task: str
    ) -> None:
        self.teacher, self.settings, self.schema, self.validator, self.task = teacher, settings, schema, validator, task

    def run(self, request: SynthRequest, number: int) -> tuple[list[dict], list[dict], dict]:
        settings = self.settings
        reply = self.teacher.complete(
            request.prompt,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            seed=settings.seed + number,
            schema=self.schema,
        )
        tokens = [reply.prompt_tokens, reply.completion_tokens, reply.retries]
        provenance = {
            "source": "synthetic",
            "teacher": self.teacher.name,
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
                why = f"missing field {error}"
                rejected.append({"id": row_id, "kind": "malformed_item", "reason": why, "raw": item, **provenance})
                continue
            problem = self._problem(row, number, tokens)
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

    def _problem(self, row: dict[str, Any], number: int, tokens: list[int]) -> tuple[str, str] | None:
        """Why the row is rejected (kind, reason), or None; the judge's tokens are added to `tokens`."""
        problem = self.validator.check(row)
        if problem is None and self.settings.judge:
            score, why, judged = judge_score(self.teacher, row, self.task, self.settings.seed + number)
            tokens[0] += judged.prompt_tokens
            tokens[1] += judged.completion_tokens
            if score is None or score < self.settings.min_judge_score:
                return "judge", f"score {score} < {self.settings.min_judge_score}: {why}"
            row["judge_score"] = score
        return problem


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
