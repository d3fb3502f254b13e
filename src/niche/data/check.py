"""`niche data check`: what a data file holds and everything wrong with it, before any training."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from niche.data.formats import read_examples
from niche.data.tasks import detect_task_kind, label_of, single_label_problem
from niche.data.template import TemplateEncoder, build_template


@dataclass
class LengthStats:
    min: int
    mean: float
    p50: float
    p95: float
    max: int

    @classmethod
    def of(cls, values: list[int]) -> LengthStats:
        ordered = sorted(values)
        return cls(
            min=ordered[0],
            mean=statistics.fmean(ordered),
            p50=statistics.median(ordered),
            p95=ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            max=ordered[-1],
        )


@dataclass
class DataReport:
    path: str
    format: str
    task_kind: str
    rows: int
    problems: list[str]
    label_counts: dict[str, int] | None = None
    prompt_tokens: LengthStats | None = None
    response_tokens: LengthStats | None = None
    empty_responses: int = 0
    duplicate_inputs: int = 0
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what `niche train` would refuse, though the rows are readable

    @property
    def ok(self) -> bool:
        return not self.problems


def check_data(
    path: Path,
    data_format: str = "auto",
    fields: dict[str, str] | None = None,
    task: str = "auto",
    tokenizer: Any | None = None,
    system_prompt: str | None = None,
) -> DataReport:
    """Read the whole file, keep every problem with its file:line, and summarise what was readable."""
    result = read_examples(path, data_format, fields)
    examples = result.examples
    report = DataReport(
        path=str(path),
        format=result.format,
        task_kind=detect_task_kind(examples, result.format, task),
        rows=len(examples),
        problems=[str(problem) for problem in result.problems],
    )
    if not examples:
        return report
    if report.task_kind == "label":
        report.label_counts = dict(Counter(label_of(example) for example in examples).most_common())
        if problem := single_label_problem(examples):
            report.warnings.append(f"{path}: {problem}; `niche train` refuses this file")
        rare = [label for label, count in report.label_counts.items() if count < 5]
        if rare:
            report.notes.append(f"labels with fewer than 5 examples: {', '.join(rare)}")
    inputs = Counter(example.input_text.strip() for example in examples)
    report.duplicate_inputs = sum(count - 1 for count in inputs.values() if count > 1)
    report.empty_responses = sum(not example.response.strip() for example in examples)
    if tokenizer is not None:
        labels = sorted(report.label_counts) if report.label_counts else None
        encoder = TemplateEncoder(
            tokenizer, build_template(tokenizer, system_prompt, None, labels, drop_default_system_prompt=True)
        )
        report.prompt_tokens = LengthStats.of([len(encoder.prompt_ids(example)) for example in examples])
        report.response_tokens = LengthStats.of([len(encoder.completion_ids(example)) for example in examples])
    return report
