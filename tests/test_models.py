from pathlib import Path

import pytest

from niche.errors import ModelError
from niche.models import CACHE_MARKER, list_models, resolve_base


def test_catalog_default_converts_once_into_a_trainable_checkpoint(smollm2_base) -> None:
    import json

    assert smollm2_base.kind == "catalog"
    config = json.loads((smollm2_base.directory / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"
    assert len(smollm2_base.weights_sha256) == 64
    again = resolve_base("smollm2-135m")
    assert again.directory == smollm2_base.directory and again.weights_sha256 == smollm2_base.weights_sha256


def test_models_lists_the_catalog_with_cache_state_and_size(smollm2_base) -> None:
    (listing,) = [item for item in list_models() if item.name == "smollm2-135m"]
    assert listing.cached and listing.size_bytes > 100 * 2**20


def test_corrupted_cache_is_detected_and_rebuilt(smollm2_base, tmp_path: Path) -> None:
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(smollm2_base.directory.parents[1], cache)
    weights = cache / "converted" / smollm2_base.directory.name / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\x00" * 64)
    rebuilt = resolve_base("smollm2-135m", cache_dir=cache)
    assert rebuilt.weights_sha256 == smollm2_base.weights_sha256


def test_partial_or_mismatched_cache_entries_are_not_trusted(smollm2_base, tmp_path: Path) -> None:
    import json
    import shutil

    from niche.models import _valid_cache_entry

    entry = tmp_path / "entry"
    shutil.copytree(smollm2_base.directory, entry)
    marker = json.loads((entry / CACHE_MARKER).read_text())
    assert _valid_cache_entry(entry, marker["source_sha256"]) == smollm2_base.weights_sha256
    assert _valid_cache_entry(entry, "another-gguf") is None
    (entry / CACHE_MARKER).unlink()
    assert _valid_cache_entry(entry, marker["source_sha256"]) is None, "an interrupted conversion has no marker"


def test_unknown_base_names_the_catalog() -> None:
    with pytest.raises(ModelError, match="unknown base model 'gpt-9'.*smollm2-135m"):
        resolve_base("gpt-9")


def test_hub_id_offline_fails_with_a_clear_message() -> None:
    with pytest.raises(
        ModelError, match="(?s)could not fetch 'someorg/some-model' from the model hub.*Without network"
    ):
        resolve_base("someorg/some-model")


def test_directory_without_config_and_missing_gguf(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        resolve_base(str(tmp_path))
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_base(str(tmp_path / "model.gguf"))


def test_local_directory_base_is_hashed(tiny_base: Path) -> None:
    base = resolve_base(str(tiny_base))
    assert base.kind == "local" and base.directory == tiny_base.resolve() and len(base.weights_sha256) == 64
