"""niche.yaml: one file per specialist, parsed into typed pydantic models.

Relative paths in the file are resolved against the file's own directory, and
`key=value` overrides from the command line win over the file.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from niche.errors import ConfigError

DataFormat = Literal["auto", "label", "prompt_completion", "alpaca", "chat"]
TaskKind = Literal["auto", "label", "generation", "json"]


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*$")


def parse_duration(value: str | float | int) -> float:
    """Seconds from 1800, "1800", "90s", "30m", "1h" or "1h30m"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).lower())
        if not match or not any(match.groups()):
            raise ValueError(f"{value!r} is not a duration: expected seconds or e.g. 90s, 30m, 1h30m")
        hours, minutes, secs = (float(part) if part else 0.0 for part in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ValueError(f"{value!r}: a duration must be positive")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Section(_Strict):
    """A section a command also builds on its own (`niche curate --config niche.yaml --seed 3`)."""

    def updated(self, **given: Any) -> Any:
        """A copy with the given values (None: not given, the section's own value stays), validated again: how a
        command's flags override the section of a niche.yaml."""
        values = self.model_dump() | {key: value for key, value in given.items() if value is not None}
        try:
            return type(self).model_validate(values)
        except ValidationError as error:
            raise ConfigError(_describe_validation_error(None, error, type(self).__name__)) from error


class DataConfig(_Strict):
    # `schema` in niche.yaml; `schema_` in Python (BaseModel has a `schema` attribute) and in stored configs.
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)

    train: Path | None = Field(
        None, description="Training examples (JSONL or CSV); `niche pipeline` fills it from curated pipeline.inputs."
    )
    validation: Path | None = Field(None, description="Validation examples; split from train when absent.")
    test: Path | None = Field(None, description="Held-out examples used by `niche eval` and `niche demo`.")
    format: DataFormat = Field("auto", description="Row shape; detected from the field names when 'auto'.")
    task: TaskKind = Field("auto", description="label, generation or json; detected from the data when 'auto'.")
    schema_: Path | None = Field(
        None,
        alias="schema",
        description="JSON tasks: a JSON Schema file every answer must match; inferred from the training answers "
        "(keys, types, enums for small closed sets of strings) when absent. Eval and serve decode under it.",
    )
    conditional_schema: bool = Field(
        False,
        description="JSON tasks, inferred schema: one anyOf branch per value of the required closed field (an "
        "intent), allowing only the optional fields seen with it, so decoding and a tagger never write a field "
        "with a value it never came with. Off by default: with 10 SLURP rows per intent it cost slot F1 (test rows "
        "pair intents and slots in ways training never showed).",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Map canonical field names (text, label, prompt, completion, instruction, input, output, "
        "messages, context) to the column names used in your files.",
    )
    validation_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="Share of train held out when no validation file (at most validation_max_rows)."
    )
    validation_max_rows: int = Field(
        500,
        ge=1,
        description="Validation rows scored at most: a larger validation file, or the share held out of train, is "
        "sampled down to this many, stratified by label (each pass then costs little; see training.eval_every).",
    )
    replay: Path | None = Field(
        None, description="General-domain rows (any shape) mixed into training against forgetting."
    )
    replay_fraction: float = Field(0.1, ge=0, le=1, description="Replay rows per training row.")


class PromptConfig(_Strict):
    system_prompt: str | None = Field(
        None, description="System message for every example. For label tasks '{labels}' is replaced by the label list."
    )
    chat_template: str | None = Field(None, description="Jinja chat template; the base model's own when absent.")
    thinking: bool = Field(
        False,
        description="For templates with a thinking mode (Qwen3, SmolLM3): leave it on. Off by default, so that "
        "answers carry no thinking tags the training rows never had.",
    )


class LoraSettings(_Strict):
    r: int | None = Field(None, ge=1, description="LoRA rank; chosen from the data when absent (niche.train.recipe).")
    alpha: int | None = Field(None, ge=1, description="LoRA scaling numerator (scale = alpha / r); 2 x r when absent.")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="LoRA dropout. Sampling its masks took ~25% of a CPU step (7 per layer), so off by default.",
    )
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' for every linear layer but the output head."
    )


class TrainingSettings(_Strict):
    """Fields left empty are chosen from the data by niche.train.recipe; the values used land in niche.json."""

    learning_rate: float | None = Field(None, gt=0, description="Peak learning rate; chosen from the data when absent.")
    scheduler: str = Field("cosine", description="Any transformers scheduler name (linear, cosine, constant, ...).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    epochs: float | None = Field(
        None, gt=0, description="Passes over the training rows; chosen from the data size when absent."
    )
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1 means use epochs.")
    time_budget: float | None = Field(
        None,
        description="Wall-clock budget for the whole run (seconds, or 90s, 30m, 1h30m): the number of steps that fits "
        "is planned from measured throughput, the schedule ends there, and the run stops on time.",
    )
    batch_size: int | None = Field(None, ge=1, description="Rows per optimizer step; chosen from the data when absent.")
    gradient_accumulation: int = Field(1, ge=1)
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="Rows per forward/backward pass (must divide batch_size): the same optimizer step in smaller "
        "passes, for less memory. When absent: on CPU the largest divisor of batch_size whose activations fit in "
        "about 2 GiB, on a GPU the whole batch.",
    )
    max_seq_length: int = Field(512, ge=16)
    seed: int = 42
    eval_every: int | None = Field(
        None,
        ge=1,
        description="Validate every N optimizer steps; when absent, about 8 times a run and at most ~10% of its time.",
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many validations without improvement (off when absent)."
    )

    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk (the best one is always kept).")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    forgetting_probe_every: int | None = Field(
        None, ge=1, description="Score everyday multiple-choice questions every N steps against the base."
    )
    forgetting_probe_questions: int = Field(60, ge=4, description="Questions in the training-time probe.")
    forgetting_threshold: float = Field(0.05, ge=0, description="Relative accuracy drop that triggers the action.")
    forgetting_action: Literal["warn", "stop"] = "warn"
    method: Literal["sft", "grpo"] = Field("sft", description="sft (supervised) or grpo (rewards; see grpo:).")
    objective: Literal["auto", "classify", "tag", "generate"] = Field(
        "auto",
        description="classify: a label head answers label tasks in one forward pass; tag: a tagging head answers "
        "JSON tasks whose fields are copied from the input or closed sets, in one forward pass; generate: the "
        "answer is decoded. auto: classify for label tasks, tag for JSON tasks it fits, generate otherwise.",
    )
    head_layer: int | None = Field(
        None,
        ge=1,
        description="classify, tag: the decoder layer whose output the head reads; chosen when absent.",
    )

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)


class EvalSettings(_Section):
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(128, ge=1, description="Generation budget for generation and JSON tasks.")
    constrain_to_labels: bool = Field(True, description="Label tasks: decode only sequences from the label set.")


class RagSettings(_Strict):
    documents: list[Path] = Field(default_factory=list, description="Domain documents (files or directories) to index.")
    index: Path | None = Field(None, description="Index directory; output_dir/NAME-index when absent.")
    top_k: int = Field(3, ge=1, description="Passages inserted as context.")
    mode: Literal["vector", "bm25", "hybrid"] = "hybrid"
    chunk_size: int = Field(800, ge=100, description="Characters per passage.")
    overlap: int = Field(150, ge=0)
    relevant_field: str | None = Field(
        None, description="Test-row field naming the passage that answers it; enables recall@k and MRR."
    )


class LadderSettings(_Strict):
    target: float = Field(0.9, description="Headline metric the recommended rung must reach.")
    price_per_hour: float = Field(0.10, ge=0, description="Hardware price per hour, for cost per million tokens.")
    latency_requests: int = Field(16, ge=1, description="Requests timed one at a time for latency.")
    general_text: Path | None = Field(None, description="General-domain text (one passage per line) for perplexity.")
    general_lines: int = Field(200, ge=1, description="Lines of general text scored.")
    general_questions: Path | None = Field(None, description="Multiple-choice set; niche's everyday set when absent.")
    forgetting_threshold: float = Field(0.05, ge=0, description="Relative drop that counts as forgetting.")
    engine_speeds: Path | None = Field(
        None, description="bench/results/edge_speed.json: cost per million tokens for each serving engine and format."
    )


class GrpoSettings(_Strict):
    start_from: Path | None = Field(None, description="An SFT specialist to continue from; the bare base when absent.")
    group_size: int = Field(8, ge=2, description="Completions sampled per prompt (GRPO's group).")
    prompts_per_step: int = Field(1, ge=1, description="Prompts per optimizer step.")
    kl: float = Field(0.04, ge=0, description="KL coefficient against the starting policy (0: no reference model).")
    max_completion_length: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0)
    rewards: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Rewards with weights, e.g. [{name: label, weight: 1}, {name: length, weight: 0.2, max_words: 4}]; "
        "by task kind when empty.",
    )


class DistillSettings(_Strict):
    teacher: Path | None = Field(
        None, description="Teacher specialist; training then adds its KD loss (niche distill)."
    )
    kind: Literal["forward_kl", "jsd"] = Field("forward_kl", description="KL(teacher||student) or GKD's JSD.")
    beta: float = Field(0.5, gt=0, lt=1, description="JSD interpolation between forward and reverse KL.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of cross-entropy on the labels; 1 - alpha for KD.")
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, ge=1, description="Compare only the teacher's k most likely tokens per position.")


class TrackingSettings(_Strict):
    enabled: bool = Field(True, description="Log runs to MLflow (MLFLOW_TRACKING_URI, else ./mlflow.db).")
    experiment: str | None = Field(None, description="MLflow experiment; the specialist name when absent.")


class CurateSettings(_Section):
    """`niche curate`, and the pipeline's curate stage."""

    near_duplicate_threshold: float = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard estimate that is a near duplicate."
    )
    shingle_size: int = Field(3, ge=1, description="Words per shingle.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations.")
    conflicts: Literal["majority", "drop", "keep"] = Field(
        "majority", description="Same or near-same input with different answers: keep the majority, drop all, keep all."
    )
    redact_pii: bool = False
    split: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description="train, validation, test fractions.")
    seed: int = 0
    max_chars: int = Field(20_000, ge=1, description="Longer rows (input and answer) are rejected.")
    decontaminate: list[Path] = Field(default_factory=list, description="Benchmarks whose n-grams leave training.")
    ngram: int = Field(13, ge=1, description="n of the decontamination n-grams (13 as in GPT-3).")
    format: DataFormat = Field("auto", description="Row shape of the inputs; detected when 'auto'.")
    engine: Literal["local", "ray"] = Field(
        "local", description="local: one process; ray: Ray Data over a cluster (the `scale` extra), same decisions."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join (ray://HOST:10001 or HOST:6379); none starts a local Ray."
    )

    @field_validator("split")
    @classmethod
    def _fractions(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(part < 0 for part in value) or abs(sum(value) - 1) > 1e-6:
            raise ValueError(f"expected three non-negative fractions summing to 1, got {value}")
        return value


class SynthSettings(_Section):
    """`niche synth`, and the pipeline's synth stage (which runs when niche.yaml has a `synth` section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    teacher: str | None = Field(None, description="OpenAI-compatible base URL, or local:NAME for an in-process model.")
    model: str | None = Field(None, description="Model name at the teacher's endpoint.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the teacher's key.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds per teacher request before it is retried.")
    max_retries: int = Field(5, ge=0, description="Retries on 429, 5xx and timeouts.")
    structured: bool = Field(True, description="Ask the teacher for schema-constrained JSON (response_format).")
    n: int = Field(100, ge=1, description="Rows wanted (accepted); rejected rows are replaced, up to max_rounds.")
    strategy: Literal["variations", "documents"] = "variations"
    per_request: int = Field(5, ge=1, description="Rows asked for in one teacher request.")
    examples_per_prompt: int = Field(5, ge=1)
    temperature: float = Field(0.9, ge=0)
    max_tokens: int = Field(768, ge=1)
    concurrency: int = Field(4, ge=1, description="Teacher requests in flight.")
    seed: int = 0
    min_chars: int = Field(3, ge=0)
    max_chars: int = Field(2000, ge=1)
    near_duplicate_threshold: float = Field(0.8, gt=0, le=1)
    prompt_template: str | None = Field(None, description="str.format fields: labels, label, examples, count, passage.")
    judge: bool = Field(False, description="Score each row with the teacher as a judge (1-5).")
    min_judge_score: int = Field(4, ge=1, le=5)
    price_input_per_million: float = Field(0.0, ge=0)
    price_output_per_million: float = Field(0.0, ge=0)
    passage_chars: int = Field(1500, ge=100)
    max_rounds: int = Field(3, ge=1)
    output_schema: dict[str, Any] | None = Field(None, description="Answers must be JSON that validates against it.")


class ExportSettings(_Section):
    """`niche export`: what parity is checked on and what it must hold."""

    quant: Literal["f16", "q8_0", "q4_k_m"] = Field("q4_k_m", description="GGUF quantization (gguf and ollama).")
    parity_rows: int = Field(32, ge=1, description="Held-out rows run through the export and the trained model.")
    max_new_tokens: int = Field(32, ge=1, description="Greedy tokens compared per row.")
    max_logit_diff: float = Field(
        0.25, gt=0, description="Full-precision exports: largest next-token logit difference allowed."
    )
    max_metric_drop: float = Field(0.02, ge=0, description="Quantized exports: larger metric drops warn.")


class ServeSettings(_Section):
    """`niche serve`: the engine and its limits."""

    engine: Literal["torch", "llamacpp", "vllm"] = "torch"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_loaded: int = Field(8, ge=1, description="Adapters kept in memory; the least recently used is evicted.")
    max_batch_size: int = Field(16, ge=1, description="Requests decoded together, across specialists.")
    max_wait_ms: float = Field(2.0, ge=0, description="When idle, how long a request waits for companions.")
    timeout: float = Field(120.0, gt=0, description="Seconds a request may run before it is stopped (504).")
    max_queue: int = Field(256, ge=1, description="Waiting requests past which a new request gets 429.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted.")
    routing: bool = Field(True, description="Serve model 'auto': route each request to the closest specialist.")
    route_threshold: float = Field(0.4, description="Below this similarity 'auto' answers with the base model.")
    registry_poll: float = Field(0.0, ge=0, description="Every N seconds, follow the registry's champion (0: off).")


class GateSettings(_Strict):
    metric: str | None = Field(None, description="Metric compared with the champion; the task's headline when absent.")
    min_improvement: float = Field(0.0, ge=0, description="How much the candidate must beat the champion by.")
    forgetting_threshold: float = Field(
        0.05, ge=0, description="Largest relative drop in everyday-question accuracy against the champion."
    )
    forgetting_questions: int = Field(60, ge=4, description="Everyday multiple-choice questions in the probe.")


class PipelineSettings(_Strict):
    inputs: list[Path] = Field(
        default_factory=list, description="Raw example files or directories; curated into train/validation/test."
    )
    work_dir: Path | None = Field(None, description="Stage outputs and state; output_dir/.pipeline/NAME when absent.")
    gate: GateSettings = Field(default_factory=GateSettings)


class WatchSettings(_Strict):
    min_new_examples: int = Field(50, ge=1, description="New rows since the last run that start a run.")
    new_labels: bool = Field(True, description="A label never seen before starts a run.")
    shift_test: Literal["psi", "chi2", "none"] = Field("psi", description="Label-distribution shift test.")
    psi_threshold: float = Field(0.2, gt=0, description="PSI at or above this is a shift (0.2: a significant one).")
    chi2_alpha: float = Field(0.01, gt=0, lt=1, description="Chi-square p-value below this is a shift.")
    shift_min_rows: int = Field(20, ge=1, description="New rows needed before the shift test speaks.")
    min_quality: float | None = Field(
        None, description="Start a run when the champion's headline metric on the new rows falls below this."
    )
    poll_seconds: float = Field(30.0, gt=0, description="Without file events, check this often.")
    settle_seconds: float = Field(2.0, ge=0, description="Wait for writes to stop this long before checking.")


class NicheConfig(_Strict):
    """Everything needed to build one specialist."""

    name: str = Field("specialist", description="Specialist name, used for the output directory and in serving.")
    base: str = Field("smollm2-135m", description="Catalog name, local HF directory, .gguf file or hub id.")
    output_dir: Path = Field(Path("specialists"), description="Specialists are written to output_dir/name.")
    quantization: Literal["none", "4bit"] = Field(
        "none", description="'4bit': QLoRA, the frozen base in 4-bit NF4 with double quantization (CUDA only)."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    curate: CurateSettings = Field(default_factory=CurateSettings)
    synth: SynthSettings | None = Field(None, description="Teacher-generated rows (the pipeline adds them when set).")
    eval: EvalSettings = Field(default_factory=EvalSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    rag: RagSettings = Field(default_factory=RagSettings)
    ladder: LadderSettings = Field(default_factory=LadderSettings)
    grpo: GrpoSettings = Field(default_factory=GrpoSettings)
    distill: DistillSettings = Field(default_factory=DistillSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)

    @field_validator("name")
    @classmethod
    def _name_is_a_directory_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("must be a plain directory name (no '/', not starting with '.')")
        return value

    @model_validator(mode="before")
    @classmethod
    def _sections_moved_out_of_pipeline(cls, data: Any) -> Any:
        """`pipeline.curate` and `pipeline.synth` were the pipeline's copies of curate's and synth's options; they
        are the top-level `curate` and `synth` sections now, which `niche curate` and `niche synth` read too."""
        pipeline = data.get("pipeline") if isinstance(data, dict) else None
        if not isinstance(pipeline, dict):
            return data
        for section in ("curate", "synth"):
            if section in pipeline:
                if section in data:
                    raise ValueError(f"pipeline.{section} and {section} both given: keep the top-level {section}")
                warnings.warn(
                    f"pipeline.{section} is now the top-level `{section}` section; move it there",
                    DeprecationWarning,
                    stacklevel=2,
                )
                data = {**data, section: pipeline[section], "pipeline": {**pipeline}}
                del data["pipeline"][section]
                pipeline = data["pipeline"]
        return data

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> NicheConfig:
        if self.training.max_steps == 0:
            raise ValueError("training.max_steps must be positive, or -1 to train for training.epochs")
        return self

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def pipeline_dir(self) -> Path:
        return self.pipeline.work_dir or self.output_dir / ".pipeline" / self.name

    @property
    def specialist_dir(self) -> Path:
        return self.output_dir / self.name


def load_config(
    path: Path | None = None, overrides: list[str] | None = None, base_dir: Path | None = None
) -> NicheConfig:
    """Read niche.yaml (or start from an empty mapping) and apply dotted `key=value` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, found {type(raw).__name__}")
        base_dir = base_dir or path.parent
    for override in overrides or []:
        apply_override(raw, override)
    try:
        config = NicheConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe_validation_error(path, error)) from error
    return resolve_paths(config, base_dir or Path.cwd())


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested mapping; the value is parsed as YAML so numbers and lists keep their type."""
    key, separator, value = override.partition("=")
    if not separator or not key:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. training.max_steps=20")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = _parse_override_value(value)


def _parse_override_value(value: str) -> Any:
    """YAML where it parses (numbers, lists, booleans keep their type), the raw text where it does not."""
    if not value.strip():
        return None
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def resolve_paths(config: NicheConfig, base_dir: Path) -> NicheConfig:
    def resolve(path: Path | None) -> Path | None:
        if path is None or path.is_absolute():
            return path
        return (base_dir / path).resolve()

    data = config.data.model_copy(
        update={
            "train": resolve(config.data.train),
            "validation": resolve(config.data.validation),
            "test": resolve(config.data.test),
            "replay": resolve(config.data.replay),
            "schema_": resolve(config.data.schema_),
        }
    )
    rag = config.rag.model_copy(
        update={"documents": [resolve(path) for path in config.rag.documents], "index": resolve(config.rag.index)}
    )
    ladder = config.ladder.model_copy(
        update={
            "general_text": resolve(config.ladder.general_text),
            "general_questions": resolve(config.ladder.general_questions),
            "engine_speeds": resolve(config.ladder.engine_speeds),
        }
    )
    curate = config.curate.model_copy(update={"decontaminate": [resolve(path) for path in config.curate.decontaminate]})
    pipeline = config.pipeline.model_copy(
        update={
            "inputs": [resolve(path) for path in config.pipeline.inputs],
            "work_dir": resolve(config.pipeline.work_dir),
        }
    )
    grpo = config.grpo.model_copy(update={"start_from": resolve(config.grpo.start_from)})
    distill = config.distill.model_copy(update={"teacher": resolve(config.distill.teacher)})
    return config.model_copy(
        update={
            "grpo": grpo,
            "distill": distill,
            "data": data,
            "output_dir": resolve(config.output_dir),
            "rag": rag,
            "ladder": ladder,
            "pipeline": pipeline,
            "curate": curate,
        }
    )


def _describe_validation_error(path: Path | None, error: ValidationError, source: str | None = None) -> str:
    source = str(path) if path else source or "config"
    problems = [f"  {'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()]
    return f"{source}: invalid configuration\n" + "\n".join(problems)


# Sections niche.yaml may leave out (None), and what a command starts from then.
OPTIONAL_SECTIONS: dict[str, Any] = {"synth": SynthSettings}


def command_section(path: Path | None, name: str) -> Any:
    """A command's settings before its flags: the named section of the niche.yaml at `path` (its paths resolved
    against the file), else that section's defaults."""
    config = load_config(path) if path is not None else NicheConfig()
    section = getattr(config, name)
    return section if section is not None else OPTIONAL_SECTIONS[name]()


def parse_fractions(text: str, option: str) -> tuple[float, ...]:
    """`0.7,0.15,0.15` as numbers, or a ConfigError naming the option."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as error:
        raise ConfigError(f"{option} {text!r}: expected comma-separated fractions") from error
