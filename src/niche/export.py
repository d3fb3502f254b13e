"""`niche export`: a specialist as merged weights, GGUF (llama.cpp), an Ollama Modelfile or a vLLM launch, each
checked against the trained model before it is called done.

- merged: the adapter merged into the full-precision base (never a quantized one); safetensors, tokenizer and
  chat template; loads with AutoModelForCausalLM.
- gguf: the merged model at the chosen quantization (f16, q8_0, q4_k_m), plus the adapter alone as a GGUF LoRA
  and the F16 base it applies to; chat template and stop tokens embedded. Conversion uses llama.cpp's own
  converters, from the llama-cpp-python source that `make llama-cpp` builds (they need the `gguf` package
  vendored beside them, so they run in a subprocess); quantization runs in process through llama.cpp.
- ollama: the GGUF export plus a Modelfile (FROM, ADAPTER for the base + LoRA variant, TEMPLATE translated
  from the stored chat template, SYSTEM, one PARAMETER stop per end-of-turn token).
- vllm: what vLLM would reject in the adapter, and the launch command.

Parity, every time: the exported model runs the specialist's held-out prompts greedily beside the trained
model (PEFT, fp32): the share of identical outputs, the largest next-token logit difference, and the task
metric for both. Full-precision exports (merged, F16) that break parity raise; quantized ones report the
metric change and warn past `max_metric_drop`. The numbers land in the export's export.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from niche.artifact import SpecialistManifest, load_test_examples, read_manifest, references_of
from niche.data.template import TemplateEncoder
from niche.errors import ConfigError, ModelError, NicheError, require_llama_cpp
from niche.families import family_of
from niche.gguf import (
    QUANT_FTYPES,
    LlamaCppRunner,
    Quant,
    check_gguf_template,
    convert_to_gguf,
    gguf_metadata,
    llama_cpp_source,
    lora_gguf,
    quantize_gguf,
    shared_base_gguf,
)
from niche.head import classify, cut_at_layer
from niche.io import atomic_directory, write_json_atomic, write_text_atomic
from niche.metrics import HEADLINE_METRIC, SCORERS
from niche.models import load_model, load_tokenizer
from niche.specialist import load_label_head, load_specialist, resolve_specialist_base
from niche.tagger import Tagger, tag_examples
from niche.vllm_compat import vllm_command_for, vllm_problems

log = logging.getLogger(__name__)

Target = Literal["merged", "gguf", "ollama", "vllm"]


class ParityError(NicheError):
    """A full-precision export does not answer like the trained model."""


@dataclass
class Parity:
    variant: str
    rows: int
    identical_rate: float
    max_logit_diff: float
    metric: str
    metric_trained: float
    metric_exported: float
    metric_delta: float
    first_divergence: list[int] = field(default_factory=list)  # per row: first differing token, -1 if none


@dataclass
class ExportResult:
    target: str
    directory: Path
    files: dict[str, int]  # file name -> bytes
    parity: list[Parity] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


# ---- llama.cpp ----------------------------------------------------------------------------------------------


# ---- greedy runners for parity ----------------------------------------------------------------------------


class TorchRunner:
    """Greedy decoding with a transformers model, with the first step's logits."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @torch.no_grad()
    def greedy(self, prompt: list[int], max_new_tokens: int, stop_ids: set[int]) -> tuple[list[int], np.ndarray]:
        output = self.model(input_ids=torch.tensor([prompt]), use_cache=True)
        logits = output.logits[0, -1].float()
        first = logits.numpy().copy()
        cache, generated = output.past_key_values, []
        for _ in range(max_new_tokens):
            token = int(torch.argmax(logits))
            if token in stop_ids:
                break
            generated.append(token)
            output = self.model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
            logits, cache = output.logits[0, -1].float(), output.past_key_values
        return generated, first


# ---- parity -------------------------------------------------------------------------------------------------


@dataclass
class ParityInputs:
    prompts: list[list[int]]
    references: list[str]
    stop_ids: set[int]
    max_new_tokens: int
    reference_outputs: list[list[int]]
    reference_logits: list[np.ndarray]


def parity_inputs(
    specialist_dir: Path, manifest: SpecialistManifest, data: Path | None, rows: int, max_new_tokens: int
) -> ParityInputs:
    """The held-out prompts and what the trained model (PEFT, fp32) answers to them."""

    data = data or manifest.trained_config().data.test
    if data is None or not Path(data).is_file():
        raise ConfigError(
            f"export parity needs held-out examples: pass --data FILE (the specialist's data.test is {data})"
        )
    model, tokenizer, _ = load_specialist(specialist_dir, "cpu", torch.float32)
    examples = load_test_examples(Path(data), manifest)[:rows]
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    prompts = [encoder.prompt_ids(dataclasses.replace(example, response="")) for example in examples]
    runner = TorchRunner(model)
    stop_ids = set(manifest.template.stop_token_ids)
    outputs, logits = zip(*(runner.greedy(prompt, max_new_tokens, stop_ids) for prompt in prompts))
    return ParityInputs(
        prompts, references_of(examples, manifest.task.kind), stop_ids, max_new_tokens, list(outputs), list(logits)
    )


def measure_parity(
    variant: str, runner: Any, inputs: ParityInputs, tokenizer: Any, manifest: SpecialistManifest
) -> Parity:
    identical, largest, divergence, texts = 0, 0.0, [], []
    for prompt, expected, expected_logits in zip(inputs.prompts, inputs.reference_outputs, inputs.reference_logits):
        produced, logits = runner.greedy(prompt, inputs.max_new_tokens, inputs.stop_ids)
        identical += produced == expected
        width = min(len(logits), len(expected_logits))
        largest = max(largest, float(np.max(np.abs(logits[:width] - expected_logits[:width]))))
        divergence.append(first_difference(produced, expected))
        texts.append(tokenizer.decode(produced, skip_special_tokens=True).strip())
    trained_texts = [tokenizer.decode(output, skip_special_tokens=True).strip() for output in inputs.reference_outputs]
    metric = HEADLINE_METRIC[manifest.task.kind]
    score = SCORERS[manifest.task.kind]
    trained = float(score(trained_texts, inputs.references, manifest.task.labels)[metric])
    exported = float(score(texts, inputs.references, manifest.task.labels)[metric])
    return Parity(
        variant,
        len(inputs.prompts),
        identical / max(1, len(inputs.prompts)),
        largest,
        metric,
        trained,
        exported,
        exported - trained,
        divergence,
    )


def first_difference(produced: list[int], expected: list[int]) -> int:
    """Index of the first token where two outputs differ; -1 when they are identical."""
    if produced == expected:
        return -1
    return next(
        (index for index, (a, b) in enumerate(zip(produced, expected)) if a != b), min(len(produced), len(expected))
    )


def family_named(manifest: SpecialistManifest) -> str:
    """The specialist, its base's family and model type, for errors a family can cause (converters, kernels)."""
    return f"{manifest.name!r} ({family_of(manifest.base.model_type)}, model_type {manifest.base.model_type})"


def judge_parity(parity: Parity, full_precision: bool, max_logit_diff: float, max_metric_drop: float) -> str | None:
    """Raise for a full-precision export that answers differently; return a warning for a quantized one."""
    if full_precision:
        if parity.identical_rate < 1.0 or parity.max_logit_diff > max_logit_diff:
            raise ParityError(
                f"{parity.variant}: parity broken: {parity.identical_rate:.0%} of {parity.rows} greedy outputs "
                f"identical to the trained model (expected 100%), largest next-token logit difference "
                f"{parity.max_logit_diff:.4f} (allowed {max_logit_diff}); the export is not written"
            )
        return None
    if -parity.metric_delta > max_metric_drop:
        return (
            f"{parity.variant}: {parity.metric} {parity.metric_exported:.4f} against {parity.metric_trained:.4f} "
            f"trained ({parity.metric_delta:+.4f}, more than the {max_metric_drop} allowed drop)"
        )
    return None


# ---- the exports --------------------------------------------------------------------------------------------


def merge_into_base(specialist_dir: Path, out_dir: Path) -> Any:
    """The adapter merged into the fp32 base, saved with its tokenizer and the stored chat template."""
    from peft import PeftModel

    manifest = read_manifest(specialist_dir)
    base = resolve_specialist_base(manifest)
    model = PeftModel.from_pretrained(load_model(base, torch.float32, "cpu"), str(specialist_dir)).merge_and_unload()
    model.eval()
    stop_ids = list(manifest.template.stop_token_ids)
    model.generation_config.eos_token_id = stop_ids[0] if len(stop_ids) == 1 else stop_ids
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer = load_tokenizer(base)
    tokenizer.chat_template = manifest.template.chat_template
    tokenizer.save_pretrained(out_dir)
    return model


def _file_sizes(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in sorted(directory.iterdir()) if path.is_file()}


def default_export_dir(specialist_dir: Path, target: str, quant: str) -> Path:
    """Where an export goes when no directory is given: `exports/NAME-TARGET[-QUANT]` beside the specialist."""
    suffix = f"-{quant}" if target in ("gguf", "ollama") else ""
    return Path(specialist_dir).parent / "exports" / f"{Path(specialist_dir).name}-{target}{suffix}"


def export_specialist(
    specialist_dir: Path,
    target: Target,
    out_dir: Path,
    *,
    quant: Quant = "q4_k_m",
    data: Path | None = None,
    parity_rows: int = 32,
    max_new_tokens: int = 32,
    max_logit_diff: float = 0.25,
    max_metric_drop: float = 0.02,
) -> ExportResult:
    """Export one specialist and prove it still answers like the trained model; written whole or not at all."""

    specialist_dir = Path(specialist_dir)
    manifest = read_manifest(specialist_dir)
    if target not in ("merged", "gguf", "ollama", "vllm"):
        raise ConfigError(f"--to {target!r}: expected merged, gguf, ollama or vllm")
    if quant not in QUANT_FTYPES:
        raise ConfigError(f"--quant {quant!r}: expected one of {', '.join(QUANT_FTYPES)}")
    if manifest.task.head is not None:
        if target != "merged":
            raise ConfigError(
                f"{manifest.name!r} answers with {manifest.task.head.describe()} (one forward pass, no decoding); "
                "GGUF, Ollama and vLLM's LoRA serving run generative models only. Export it with --to merged "
                "(weights plus the head), serve it with `niche serve` (torch engine), or retrain with "
                "training.objective: generate"
            )
        return _export_head_merged(specialist_dir, manifest, Path(out_dir), data, parity_rows)
    if target == "vllm":
        return _export_vllm(specialist_dir, manifest, Path(out_dir))
    if target in ("gguf", "ollama"):
        require_llama_cpp(f"--to {target}")
        llama_cpp_source()
    inputs = parity_inputs(specialist_dir, manifest, data, parity_rows, max_new_tokens)
    tokenizer = load_tokenizer(resolve_specialist_base(manifest))
    result = ExportResult(target, Path(out_dir), {})
    with atomic_directory(Path(out_dir)) as staging:
        merged_dir = staging if target == "merged" else staging / ".merged"
        merged = merge_into_base(specialist_dir, merged_dir)
        if target == "merged":
            result.parity.append(
                measure_parity("merged (fp32 safetensors)", TorchRunner(merged), inputs, tokenizer, manifest)
            )
        del merged
        if target in ("gguf", "ollama"):
            try:
                _export_gguf(specialist_dir, manifest, staging, merged_dir, quant, inputs, tokenizer, result)
            except ModelError as error:
                raise ModelError(f"{family_named(manifest)}: {target} export failed in llama.cpp: {error}") from error
            shutil.rmtree(merged_dir)
        for parity in result.parity:
            full_precision = parity.variant.startswith(("merged", "f16", "base f16"))
            try:
                warning = judge_parity(parity, full_precision, max_logit_diff, max_metric_drop)
            except ParityError as error:
                raise ParityError(f"{family_named(manifest)}: {target} export refused: {error}") from error
            if warning:
                log.warning(warning)
                result.warnings.append(warning)
        if target == "ollama":
            write_text_atomic(staging / "Modelfile", modelfile(manifest, tokenizer, f"model-{quant}.gguf"))
            write_text_atomic(
                staging / "Modelfile.adapter", modelfile(manifest, tokenizer, "base-f16.gguf", "adapter-f16.gguf")
            )
        record = {
            "specialist": manifest.name,
            "source": str(specialist_dir.resolve()),
            "target": target,
            "quant": quant if target != "merged" else "fp32",
            "parity": [asdict(parity) for parity in result.parity],
            "warnings": result.warnings,
            **result.details,
        }
        write_json_atomic(staging / "export.json", record)
        result.files = _file_sizes(staging)
    return result


def _export_gguf(
    specialist_dir: Path,
    manifest: SpecialistManifest,
    staging: Path,
    merged_dir: Path,
    quant: Quant,
    inputs: ParityInputs,
    tokenizer: Any,
    result: ExportResult,
) -> None:
    f16 = convert_to_gguf(merged_dir, staging / "model-f16.gguf")
    checked = check_gguf_template(f16, manifest)
    runner = LlamaCppRunner(f16)
    try:
        result.parity.append(measure_parity("f16 merged (llama.cpp)", runner, inputs, tokenizer, manifest))
    finally:
        runner.close()
    model_file = f16
    if quant != "f16":
        model_file = quantize_gguf(f16, staging / f"model-{quant}.gguf", quant)
        runner = LlamaCppRunner(model_file)
        try:
            result.parity.append(measure_parity(f"{quant} merged (llama.cpp)", runner, inputs, tokenizer, manifest))
        finally:
            runner.close()
        f16.unlink()
    base = resolve_specialist_base(manifest)
    base_gguf = shared_base_gguf(base)
    _link_or_copy(base_gguf, staging / "base-f16.gguf")
    adapter = staging / "adapter-f16.gguf"
    _link_or_copy(lora_gguf(specialist_dir, base), adapter)
    runner = LlamaCppRunner(staging / "base-f16.gguf", adapter)
    try:
        result.parity.append(measure_parity("base f16 + LoRA (llama.cpp)", runner, inputs, tokenizer, manifest))
    finally:
        runner.close()
    metadata = gguf_metadata(model_file)
    result.details |= {
        "model": model_file.name,
        "bits_per_weight": metadata["bits_per_weight"],
        "tensor_types": metadata["tensor_types"],
        "stop_token_ids": checked,
    }


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# ---- Ollama ---------------------------------------------------------------------------------------------------

_SYSTEM, _USER, _REPLY = "\x1aSYSTEM\x1a", "\x1aUSER\x1a", "\x1aREPLY\x1a"


def ollama_template(tokenizer: Any, chat_template: str) -> str:
    """The stored Jinja chat template as an Ollama (Go) template for one system + user turn, found by rendering
    it around marker strings: what stands between the markers is the template's own text."""

    def render(messages: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False)

    with_system = render(
        [
            {"role": "system", "content": _SYSTEM},
            {"role": "user", "content": _USER},
            {"role": "assistant", "content": _REPLY},
        ]
    )
    without_system = render([{"role": "user", "content": _USER}, {"role": "assistant", "content": _REPLY}])
    if with_system.count(_SYSTEM) != 1 or with_system.count(_USER) != 1 or with_system.count(_REPLY) != 1:
        raise ModelError("the chat template cannot be translated for Ollama: it does not render each message once")
    system_head, rest = with_system.split(_SYSTEM)
    system_to_user, rest = rest.split(_USER)
    user_to_reply, reply_tail = rest.split(_REPLY)
    default_head = without_system.split(_USER)[0]
    return (
        f"{{{{ if .System }}}}{system_head}{{{{ .System }}}}{system_to_user}"
        f"{{{{ else }}}}{default_head}{{{{ end }}}}"
        f"{{{{ .Prompt }}}}{user_to_reply}{{{{ .Response }}}}{reply_tail}"
    )


def render_ollama_template(template: str, system: str | None, prompt: str, response: str | None = None) -> str:
    """What Ollama renders from a template that ollama_template wrote: without a response, the prompt it
    generates from (Ollama stops the template at `{{ .Response }}`); with one, the whole conversation."""
    head, rest = template.split("{{ else }}")
    default, tail = rest.split("{{ end }}", 1)
    opening = head.removeprefix("{{ if .System }}").replace("{{ .System }}", system) if system else default
    rendered = opening + tail.replace("{{ .Prompt }}", prompt)
    if response is None:
        return rendered.split("{{ .Response }}")[0]
    return rendered.replace("{{ .Response }}", response)


def modelfile(manifest: SpecialistManifest, tokenizer: Any, model_file: str, adapter_file: str | None = None) -> str:
    template = ollama_template(tokenizer, manifest.template.chat_template)
    stops = [tokenizer.convert_ids_to_tokens(token) for token in manifest.template.stop_token_ids]
    lines = [
        f"# niche export of {manifest.name}: ollama create {manifest.name} -f {'Modelfile.adapter' if adapter_file else 'Modelfile'}"
    ]
    lines.append(f"FROM ./{model_file}")
    if adapter_file:
        lines.append(f"ADAPTER ./{adapter_file}")
    lines.append(f'TEMPLATE """{template}"""')
    if manifest.template.system_prompt:
        lines.append(f'SYSTEM """{manifest.template.system_prompt}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


# ---- vLLM -----------------------------------------------------------------------------------------------------


HEAD_EXPORT_README = """# {name}: a label head, exported

`model.safetensors` is the base with the LoRA adapter merged (fp32); `{head_file}` is the head. To classify a text:

```python
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained(".").eval()
tokenizer = AutoTokenizer.from_pretrained(".")
head = load_file("{head_file}")
labels = {labels!r}
ids = tokenizer.apply_chat_template([{{"role": "user", "content": "TEXT"}}], return_tensors="pt", return_dict=True)
captured = {{}}  # the head reads the output of decoder layer {layer} (before any final norm)
model.model.layers[{layer} - 1].register_forward_hook(
    lambda module, args, output: captured.update(hidden=output[0] if isinstance(output, tuple) else output)
)
with torch.no_grad():
    model(**ids)
hidden = captured["hidden"]
pooled = (hidden * ids["attention_mask"][..., None]).sum(1) / ids["attention_mask"].sum()
pooled = torch.nn.functional.layer_norm(pooled, pooled.shape[-1:], head["norm.weight"], head["norm.bias"])
print(labels[int((pooled @ head["linear.weight"].T + head["linear.bias"]).argmax())])
```
"""


TAGGER_EXPORT_README = """# {name}: a tagging head, exported

`model.safetensors` is the base with the LoRA adapter merged (fp32); `{head_file}` holds the tagging heads and
`niche.json` (`task.head`) their fields. The heads read the output of decoder layer {layer} (before any final norm)
for the input {echo}: a tag head (layer norm and a linear map onto the tags {tags}) on each token of the tagged
copy, and a label head per closed-set field on the mean over the tokens; BIO spans of the input's text and the
chosen values make the JSON answer. `niche.tagger.load_tagger` and `tag_examples` run them on this model cut at
layer {layer} (`niche.head.cut_at_layer`), as `niche serve` does.
"""


def _head_answers(model: Any, head: Any, encoder: TemplateEncoder, labels: Any, examples: list[Any]) -> list[str]:
    """A head specialist's answers: its tagger's JSON, or its label head's labels."""
    if isinstance(head, Tagger):
        return tag_examples(model, head, encoder, examples)
    return classify(model, head, encoder, labels, examples)


def _export_head_merged(
    specialist_dir: Path, manifest: SpecialistManifest, out_dir: Path, data: Path | None, rows: int
) -> ExportResult:
    """The adapter merged into the whole fp32 base, with the head beside it; the merged model's head answers must
    match the trained specialist's on the held-out rows."""

    record = manifest.task.head
    assert record is not None
    data = data or manifest.trained_config().data.test
    if data is None or not Path(data).is_file():
        raise ConfigError(
            f"export parity needs held-out examples: pass --data FILE (the specialist's data.test is {data})"
        )
    trained, tokenizer, _ = load_specialist(specialist_dir, "cpu", torch.float32)
    head = load_label_head(specialist_dir, manifest, trained)
    examples = load_test_examples(Path(data), manifest)[:rows]
    encoder = TemplateEncoder(tokenizer, manifest.template.to_template())
    labels = manifest.task.labels
    expected = _head_answers(trained, head, encoder, labels, examples)
    result = ExportResult("merged", out_dir, {})
    with atomic_directory(out_dir) as staging:
        merged = merge_into_base(specialist_dir, staging)
        # The merged model is whole; the head reads its layer, as the trained (cut) model did.
        produced = _head_answers(cut_at_layer(merged, record.layer), head, encoder, labels, examples)
        shutil.copy(specialist_dir / record.file, staging / record.file)
        shutil.copy(specialist_dir / "niche.json", staging / "niche.json")
        write_text_atomic(staging / "README.md", _head_readme(manifest, head))
        references = references_of(examples, manifest.task.kind)
        identical = sum(a == b for a, b in zip(produced, expected)) / max(1, len(examples))
        score = HEADLINE_METRIC[manifest.task.kind]
        parity = Parity(
            "merged (fp32 safetensors + head)",
            len(examples),
            identical,
            0.0,
            score,
            float(SCORERS[manifest.task.kind](expected, references, labels)[score]),
            float(SCORERS[manifest.task.kind](produced, references, labels)[score]),
            0.0,
        )
        parity.metric_delta = parity.metric_exported - parity.metric_trained
        if identical < 1.0:
            raise ParityError(
                f"the merged export answers {identical:.1%} of {len(examples)} held-out rows as the trained specialist "
                "does; a full-precision export must answer every row alike"
            )
        result.parity.append(parity)
        write_json_atomic(
            staging / "export.json",
            {
                "specialist": manifest.name,
                "source": str(specialist_dir.resolve()),
                "target": "merged",
                "quant": "fp32",
                "head": manifest.task.head.model_dump(),
                "parity": [asdict(parity)],
                "warnings": [],
            },
        )
        result.files = _file_sizes(staging)
    return result


def _head_readme(manifest: SpecialistManifest, head: Any) -> str:
    record = manifest.task.head
    assert record is not None
    if isinstance(head, Tagger):
        echo = "read twice (its tokens, a newline, its tokens again, end-of-sequence; tags on the second copy)"
        return TAGGER_EXPORT_README.format(
            name=manifest.name,
            head_file=record.file,
            layer=record.layer,
            echo=echo if record.echo else "(its tokens, then end-of-sequence)",
            tags=head.tags,
        )
    return HEAD_EXPORT_README.format(
        name=manifest.name, head_file=record.file, labels=manifest.task.labels, layer=record.layer
    )


def _export_vllm(specialist_dir: Path, manifest: SpecialistManifest, out_dir: Path) -> ExportResult:
    adapter_config = json.loads((specialist_dir / "adapter_config.json").read_text())
    problems = vllm_problems(manifest, adapter_config)
    if problems:
        raise ModelError("vLLM would reject this adapter:\n  " + "\n  ".join(problems))
    command = vllm_command_for({manifest.name: (specialist_dir, manifest)})
    result = ExportResult("vllm", out_dir, {})
    with atomic_directory(out_dir) as staging:
        write_json_atomic(
            staging / "export.json",
            {"specialist": manifest.name, "target": "vllm", "checks": "passed", "command": command},
        )
        import shlex

        write_text_atomic(staging / "serve.sh", "#!/bin/sh\nexec " + shlex.join(command) + "\n")
        os.chmod(staging / "serve.sh", 0o755)
        result.files = _file_sizes(staging)
    result.details["command"] = command
    return result


def parity_table(parities: Sequence[Parity]) -> str:
    lines = [
        "| variant | rows | identical greedy outputs | max next-token logit diff | metric trained | metric exported |",
        "|---|---|---|---|---|---|",
    ]
    for parity in parities:
        lines.append(
            f"| {parity.variant} | {parity.rows} | {parity.identical_rate:.0%} | {parity.max_logit_diff:.4f} | "
            f"{parity.metric} {parity.metric_trained:.4f} | {parity.metric_exported:.4f} ({parity.metric_delta:+.4f}) |"
        )
    return "\n".join(lines)
