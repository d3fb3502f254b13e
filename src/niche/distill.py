"""`niche distill`: a larger specialist teaches a smaller, faster student.

- Logit level (`--mode logits`, teacher and student share a tokenizer): the student trains on the same
  examples with loss alpha * cross-entropy + (1 - alpha) * KD, where KD compares the teacher's and the
  student's next-token distributions on the supervised positions only: forward KL(teacher || student), or the
  generalised Jensen-Shannon divergence of GKD (`beta` interpolates between forward and reverse KL). A
  temperature softens both (the loss is scaled by T^2, as in Hinton et al.); `top_k` keeps the teacher's k
  most likely tokens per position (both distributions renormalised over them), bounding memory.
- Sequence level (`--mode sequence`): the teacher answers unlabeled inputs (label specialists within their
  label set), the rows are curated (deduplicated, rejects kept with reasons) and the student is fine-tuned
  on them with ordinary SFT.

The worked example makes the student from the teacher's own base by keeping a subset of its decoder layers
(`--student-layers 0,2,4,...` or `every_other`), saved as a local base checkpoint next to the specialist.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from niche.artifact import is_specialist, read_manifest, require_generative
from niche.config import NicheConfig, SynthSettings
from niche.curate import curate
from niche.data.examples import Example
from niche.data.formats import load_examples
from niche.data.prepare import prepare_data
from niche.data.template import TemplateEncoder, system_prompt_with_labels
from niche.errors import ConfigError, DataError, ModelError
from niche.eval.generation import answer_examples
from niche.hardware import detect_hardware
from niche.io import atomic_directory, write_jsonl_atomic
from niche.models import load_model, load_tokenizer, resolve_base
from niche.specialist import load_label_head, load_specialist, resolve_specialist_base
from niche.synth import Validator
from niche.teachers import TeacherError, make_teacher
from niche.train import train
from niche.train.loss import causal_lm_of

log = logging.getLogger(__name__)


def parse_student_layers(text: str) -> list[int] | str:
    """`--student-layers`: 'every_other', or comma-separated decoder layer indices like 0,2,4."""
    if text == "every_other":
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError as error:
        raise ConfigError(f"--student-layers {text!r}: expected every_other or indices like 0,2,4") from error


def student_from_layers(base: Any, keep: list[int] | str, target: Path) -> Path:
    """A smaller base: the teacher's base with only the decoder layers in `keep` (indices, or 'every_other'),
    saved (weights, config, tokenizer) as a local checkpoint directory niche can train on."""

    model = load_model(base, torch.float32, "cpu")
    layers = causal_lm_of(model).model.layers
    indices = list(range(0, len(layers), 2)) if keep == "every_other" else list(keep)
    if not indices or any(index < 0 or index >= len(layers) for index in indices) or len(set(indices)) != len(indices):
        raise ConfigError(f"--student-layers: expected distinct indices in 0..{len(layers) - 1}, got {keep}")
    kept = torch.nn.ModuleList(layers[index] for index in indices)
    for position, layer in enumerate(kept):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = position  # the KV cache is indexed by a layer's position in the stack
    causal_lm_of(model).model.layers = kept
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[index] for index in indices]
    with atomic_directory(target) as staging:
        model.save_pretrained(staging)
        load_tokenizer(base).save_pretrained(staging)
        (staging / "niche-student.json").write_text(json.dumps({"from": base.spec, "layers": indices}, indent=2))
    return target


def distill_config(config: NicheConfig, teacher_dir: Path, student_base: Path | str) -> NicheConfig:
    """The student's training config: the teacher's prompt template, on the student base."""

    manifest = read_manifest(teacher_dir)
    prompt = config.prompt.model_copy(
        update={"system_prompt": manifest.template.system_prompt, "chat_template": manifest.template.chat_template}
    )
    return config.model_copy(update={"base": str(student_base), "prompt": prompt})


def distill_logits(
    config: NicheConfig, teacher_dir: Path, student_layers: list[int] | str, *, show_progress: bool = True
) -> Any:
    """Make the student base from the teacher's, then train the student against the teacher's distributions."""

    teacher_manifest = read_manifest(teacher_dir)
    require_generative(
        teacher_manifest,
        "--mode logits: the teacher",
        "has no next-token distributions to distil",
        "use --mode sequence (the student learns the teacher's labels)",
    )
    teacher_base = resolve_specialist_base(teacher_manifest)
    student_base = student_from_layers(teacher_base, student_layers, config.output_dir / f"{config.name}-student-base")
    if load_tokenizer(teacher_base).get_vocab() != load_tokenizer(resolve_base(str(student_base))).get_vocab():
        raise ModelError("logit distillation needs teacher and student to share a tokenizer; use --mode sequence")
    student_config = distill_config(config, teacher_dir, student_base)
    student_config = student_config.model_copy(
        update={"distill": student_config.distill.model_copy(update={"teacher": Path(teacher_dir).resolve()})}
    )
    return train(student_config, show_progress=show_progress)


def read_unlabeled(path: Path) -> list[str]:
    """Inputs to label: JSONL rows with a `text` (or `prompt`/`input`) field, or one input per line of text."""

    inputs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if Path(path).suffix.lower() != ".jsonl":
            inputs.append(line.strip())
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise DataError(path, f"malformed JSON ({error}); expected one object per line", line=number) from error
        text = next((row[key] for key in ("text", "prompt", "input") if isinstance(row, dict) and row.get(key)), None)
        if not isinstance(text, str):
            raise DataError(path, "expected a 'text', 'prompt' or 'input' field", line=number)
        inputs.append(text)
    if not inputs:
        raise DataError(path, "no inputs")
    return inputs


def _is_specialist(teacher: Path | str) -> bool:
    return not str(teacher).startswith(("http://", "https://", "local:")) and is_specialist(Path(teacher))


def _specialist_answers(teacher_dir: Path, texts: list[str]) -> tuple[list[str | None], list[str] | None]:
    """A local specialist answers with its stored template, label specialists only within their label set."""

    manifest = read_manifest(teacher_dir)
    hardware = detect_hardware()
    teacher, tokenizer, _ = load_specialist(teacher_dir, hardware.device, hardware.dtype)
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    examples = [Example(messages=({"role": "user", "content": text},), response="") for text in texts]
    labels = manifest.task.labels if manifest.task.kind == "label" else None
    options: dict[str, Any] = {"batch_size": 16, "max_new_tokens": 128, "allowed_answers": labels}
    head = load_label_head(teacher_dir, manifest, teacher)
    if head is not None:
        options |= {"head": head, "labels": labels}
    with torch.no_grad():
        answers = answer_examples(teacher, encoder, examples, options)
    return list(answers), labels


def _endpoint_answers(
    teacher: str, teacher_model: str | None, system: str | None, texts: list[str], concurrency: int
) -> tuple[list[str | None], list[str], dict[str, int]]:
    """An OpenAI-compatible endpoint (or `local:NAME`) answers each input, `concurrency` at a time, greedily.

    A request that still fails after the client's retries leaves its input unanswered (None) with the reason,
    so one dead request costs one row, not the run."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    client = make_teacher(teacher, teacher_model)
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "retries": 0}
    usage_lock = threading.Lock()
    failures: list[str] = [""] * len(texts)

    def answer(index: int) -> str | None:
        try:
            reply = client.complete(
                texts[index], temperature=0.0, max_tokens=256, seed=index, schema=None, system=system
            )
        except TeacherError as error:
            failures[index] = str(error)
            return None
        with usage_lock:
            usage["prompt_tokens"] += reply.prompt_tokens
            usage["completion_tokens"] += reply.completion_tokens
            usage["retries"] += reply.retries
        return reply.text.strip()

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = list(pool.map(answer, range(len(texts))))
    return answers, failures, usage


def _canonical_label(answer: str, labels: list[str]) -> str:
    """A teacher's free-text answer as the label it names (case and surrounding punctuation aside)."""
    cleaned = answer.strip().strip(".'\"`*").strip()
    by_lower = {label.lower(): label for label in labels}
    return by_lower.get(cleaned.lower(), cleaned)


def distill_sequences(
    config: NicheConfig,
    teacher: Path | str,
    inputs_path: Path,
    *,
    teacher_model: str | None = None,
    concurrency: int = 4,
    show_progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """The teacher answers the inputs; the rows pass synth's validation and curation; the student is fine-tuned.

    The teacher is a local specialist directory (its stored template, label specialists constrained to their
    label set, and the student inherits that template) or an OpenAI-compatible endpoint / `local:NAME`, which
    is sent the student's own system prompt; its answers must then be labels of the student's training data.
    Every input that does not become a training row is in `.NAME.distill/rejects.jsonl` with the reason."""

    texts = read_unlabeled(inputs_path)
    usage: dict[str, int] = {}
    if _is_specialist(teacher):
        answers, labels = _specialist_answers(Path(teacher), texts)
        failures = [""] * len(texts)
        student_config = distill_config(config, Path(teacher), config.base)
        teacher_name = str(Path(teacher).resolve())
    else:
        data = prepare_data(config)
        labels = data.labels
        system = system_prompt_with_labels(config.prompt.system_prompt, labels)
        answers, failures, usage = _endpoint_answers(str(teacher), teacher_model, system, texts, concurrency)
        student_config = config
        teacher_name = f"{teacher}#{teacher_model}" if teacher_model else str(teacher)
    tests = load_examples(config.data.test, config.data.format, config.data.fields).examples if config.data.test else []
    validator = Validator(SynthSettings(), labels or [], [], tests)
    rows, rejects = [], []
    for number, (text, answer) in enumerate(zip(texts, answers), start=1):
        source = f"{inputs_path}:{number}"
        if answer is None:
            rejects.append({"source": source, "text": text, "kind": "teacher", "reason": failures[number - 1]})
            continue
        row = (
            {"text": text, "label": _canonical_label(answer, labels)}
            if labels
            else {"prompt": text, "completion": answer}
        )
        problem = validator.check(row)
        if problem is not None:
            rejects.append({"source": source, "row": row, "kind": problem[0], "reason": problem[1]})
            continue
        rows.append(row | {"source": "distilled", "teacher": teacher_name})
    work = config.output_dir / f".{config.name}.distill"
    write_jsonl_atomic(work / "teacher_rows.jsonl", rows)
    write_jsonl_atomic(work / "rejects.jsonl", rejects)
    if len(rows) < 3:
        raise ModelError(
            f"the teacher gave only {len(rows)} usable answers for {len(texts)} inputs; see {work / 'rejects.jsonl'}"
        )
    report = curate([work / "teacher_rows.jsonl"], work / "curated")
    data = student_config.data.model_copy(
        update={"train": work / "curated" / "train.jsonl", "validation": work / "curated" / "validation.jsonl"}
    )
    result = train(student_config.model_copy(update={"data": data}), show_progress=show_progress)
    summary = {
        "inputs": len(texts),
        "answered": len(rows),
        "rejected": dict(Counter(reject["kind"] for reject in rejects)),
        "curated": report.splits,
        "teacher_usage": usage,
    }
    return result, summary
