"""Evaluation: task metrics, batched inference with the stored template, base vs specialist reports."""

from niche.eval.evaluate import EvalReport, evaluate, markdown_report, write_report

__all__ = ["EvalReport", "evaluate", "markdown_report", "write_report"]
