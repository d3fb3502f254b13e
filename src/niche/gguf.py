"""llama.cpp's toolchain, shared by `niche export` (GGUF, Ollama) and the llama.cpp serving engine: converting a
Hugging Face checkpoint or a LoRA adapter to GGUF (cached once per base and per adapter), quantizing, reading a
GGUF's metadata, and greedy decoding with the next-token logits for parity checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np

from niche.artifact import SpecialistManifest
from niche.errors import ConfigError, ModelError
from niche.io import sha256_of_file
from niche.models import cache_root

Quant = Literal["f16", "q8_0", "q4_k_m"]


QUANT_FTYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* values


LLAMA_CPP_ENV = "NICHE_LLAMA_CPP_DIR"


def llama_cpp_source() -> Path:
    """llama.cpp's Python converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/, gguf-py/),
    unpacked from the llama-cpp-python source distribution by `make llama-cpp`."""
    candidates = [Path(os.environ[LLAMA_CPP_ENV])] if os.environ.get(LLAMA_CPP_ENV) else []
    candidates.append(Path(sys.prefix) / "share" / "niche" / "llama.cpp")
    for candidate in candidates:
        if (candidate / "convert_hf_to_gguf.py").is_file() and (candidate / "gguf-py").is_dir():
            return candidate
    raise ConfigError(
        "GGUF export needs llama.cpp's converters: run `make llama-cpp` (it unpacks them from the llama-cpp-python "
        f"source into {candidates[-1]}), or point {LLAMA_CPP_ENV} at a llama.cpp checkout"
    )


def _run_converter(script: str, arguments: list[str]) -> None:
    source = llama_cpp_source()
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(source / "gguf-py"), str(source)])}
    completed = subprocess.run(
        [sys.executable, str(source / script), *arguments], capture_output=True, text=True, env=env, check=False
    )
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-15:])
        raise ModelError(f"llama.cpp {script} failed (exit {completed.returncode}):\n{tail}")


def convert_to_gguf(model_dir: Path, out_file: Path) -> Path:
    """An F16 GGUF of a Hugging Face checkpoint directory."""
    _run_converter("convert_hf_to_gguf.py", [str(model_dir), "--outtype", "f16", "--outfile", str(out_file)])
    return out_file


def convert_lora_to_gguf(adapter_dir: Path, base_dir: Path, out_file: Path) -> Path:
    _run_converter(
        "convert_lora_to_gguf.py",
        [str(adapter_dir), "--base", str(base_dir), "--outtype", "f16", "--outfile", str(out_file)],
    )
    return out_file


def quantize_gguf(source: Path, target: Path, quant: Quant) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[quant]
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise ModelError(f"llama.cpp could not quantize {source} to {quant}")
    return target


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The GGUF's chat template, stop tokens and tensor types (for the bits-per-weight report)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str) -> Any:
        field_ = reader.fields.get(key)
        if field_ is None:
            return None
        content = field_.parts[field_.data[0]]
        return bytes(content).decode() if field_.types and field_.types[0].name == "STRING" else content.tolist()[0]

    parameters = sum(int(np.prod(tensor.shape)) for tensor in reader.tensors)
    types: dict[str, int] = {}
    for tensor in reader.tensors:
        types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + int(np.prod(tensor.shape))
    return {
        "chat_template": value("tokenizer.chat_template"),
        "eos_token_id": value("tokenizer.ggml.eos_token_id"),
        "eot_token_id": value("tokenizer.ggml.eot_token_id"),
        "parameters": parameters,
        "bits_per_weight": round(path.stat().st_size * 8 / parameters, 2),
        "tensor_types": types,
    }


class LlamaCppRunner:
    """Greedy decoding with llama.cpp (a GGUF model, optionally with a GGUF LoRA applied)."""

    def __init__(self, model_path: Path, lora_path: Path | None = None, n_ctx: int = 1024) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(model_path),
            lora_path=str(lora_path) if lora_path else None,
            n_ctx=n_ctx,
            verbose=False,
            n_threads=os.cpu_count() or 1,
        )

    def greedy(self, prompt: list[int], max_new_tokens: int, stop_ids: set[int]) -> tuple[list[int], np.ndarray]:
        self.llm.reset()
        self.llm.eval(prompt)
        first = last_logits(self.llm)
        logits, generated = first, []
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits))
            if token in stop_ids:
                break
            generated.append(token)
            self.llm.eval([token])
            logits = last_logits(self.llm)
        return generated, first

    def close(self) -> None:
        self.llm.close()


def check_gguf_template(path: Path, manifest: SpecialistManifest) -> list[int]:
    """The GGUF carries the specialist's chat template and stops on its end-of-turn token (PITFALLS: exports
    that lose the template or the stop token ramble)."""
    metadata = gguf_metadata(path)
    if metadata["chat_template"] != manifest.template.chat_template:
        raise ModelError(f"{path.name}: the embedded chat template differs from the specialist's stored one")
    stops = {metadata["eos_token_id"], metadata["eot_token_id"]} - {None}
    missing = set(manifest.template.stop_token_ids) - stops
    if missing and not stops & set(manifest.template.stop_token_ids):
        raise ModelError(
            f"{path.name}: stops on {sorted(stops)} but the specialist ends its turns with {sorted(missing)}"
        )
    return sorted(stops)


def shared_base_gguf(base: Any) -> Path:
    """The F16 GGUF of the base, converted once per base and cached beside the converted checkpoint."""
    target = cache_root() / "gguf" / f"{base.weights_sha256[:16]}-f16.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        convert_to_gguf(base.directory, partial)
        os.replace(partial, target)
    return target


def lora_gguf(specialist_dir: Path, base: Any) -> Path:
    """The specialist's adapter as a GGUF LoRA (F16), converted once per adapter content and cached."""
    digest = sha256_of_file(Path(specialist_dir) / "adapter_model.safetensors")[:16]
    target = cache_root() / "gguf" / f"lora-{digest}-{base.weights_sha256[:8]}.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        convert_lora_to_gguf(Path(specialist_dir), base.directory, partial)
        os.replace(partial, target)
    return target


def last_logits(llm: Any) -> np.ndarray:
    """The logits llama.cpp computed for the last evaluated position (a copy)."""
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()
