from pathlib import Path

import pytest

from conftest import REPO
from niche.config import load_config
from niche.errors import ConfigError


@pytest.mark.parametrize("path", sorted(REPO.glob("examples/*/niche.yaml")), ids=lambda path: path.parent.name)
def test_every_shipped_example_config_loads_and_points_at_existing_data(path: Path) -> None:
    config = load_config(path)
    for split in (config.data.train, config.data.validation, config.data.test):
        assert split is not None and split.is_file(), split


def test_overrides_win_over_the_file_and_keep_their_types(tmp_path: Path) -> None:
    config_file = tmp_path / "niche.yaml"
    config_file.write_text("data:\n  train: data/train.jsonl\ntraining:\n  max_steps: 100\n")
    config = load_config(config_file, ["training.max_steps=7", "lora.target_modules=[q_proj, v_proj]"])
    assert config.training.max_steps == 7
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.data.train == (tmp_path / "data" / "train.jsonl").resolve()


def test_invalid_field_is_named_in_the_error(tmp_path: Path) -> None:
    config_file = tmp_path / "niche.yaml"
    config_file.write_text("data:\n  train: t.jsonl\ntraining:\n  batch_size: 0\n  warmup: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(config_file)
    message = str(error.value)
    assert str(config_file) in message
    assert "training.batch_size" in message and "training.warmup" in message


def test_malformed_override_says_what_is_expected() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["training.max_steps"])


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize("path", sorted(REPO.glob("examples/accelerate/*.yaml")), ids=lambda path: path.stem)
def test_shipped_accelerate_configs_load_with_accelerate(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.distributed_type.value in {"FSDP", "DEEPSPEED"} and config.num_processes > 1
