from pathlib import Path

import pytest
from pydantic import ValidationError

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


def test_every_stage_reads_its_section_of_one_file_and_flags_override_it(tmp_path: Path) -> None:
    from niche.config import CurateSettings, ExportSettings, ServeSettings, SynthSettings, command_section

    config_file = tmp_path / "niche.yaml"
    config_file.write_text(
        "curate:\n  split: [0.5, 0.25, 0.25]\n  decontaminate: [bench.jsonl]\n"
        "synth:\n  teacher: http://127.0.0.1:9/v1\n  model: big\n  n: 7\n"
        "export:\n  quant: q8_0\n"
        "serve:\n  engine: llamacpp\n  port: 9001\n"
    )
    curate = command_section(config_file, "curate")
    assert isinstance(curate, CurateSettings) and curate.split == (0.5, 0.25, 0.25)
    assert curate.decontaminate == [(tmp_path / "bench.jsonl").resolve()], "paths resolve against the file"
    assert curate.updated(seed=3, split=None).seed == 3 and curate.updated(seed=3).split == (0.5, 0.25, 0.25)
    synth = command_section(config_file, "synth")
    assert isinstance(synth, SynthSettings) and (synth.teacher, synth.model, synth.n) == (
        "http://127.0.0.1:9/v1",
        "big",
        7,
    )
    assert isinstance(command_section(config_file, "export"), ExportSettings)
    assert command_section(config_file, "export").quant == "q8_0"
    serve = command_section(config_file, "serve")
    assert isinstance(serve, ServeSettings) and (serve.engine, serve.port, serve.host) == (
        "llamacpp",
        9001,
        "127.0.0.1",
    )
    assert command_section(None, "synth") == SynthSettings(), "no file: the section's defaults"
    with pytest.raises(ConfigError, match="port"):
        serve.updated(port=70000)


def test_a_bad_section_value_is_named_in_the_file_and_in_code(tmp_path: Path) -> None:
    from niche.config import CurateSettings, SynthSettings

    config_file = tmp_path / "niche.yaml"
    config_file.write_text("curate:\n  conflicts: vote\n")
    with pytest.raises(ConfigError, match=r"niche.yaml: invalid configuration\n  curate.conflicts"):
        load_config(config_file)
    with pytest.raises(ConfigError, match=r"CurateSettings: invalid configuration\n  split"):
        CurateSettings().updated(split=(0.5, 0.5, 0.5))
    with pytest.raises(ValidationError, match="strategy"):  # built in code: pydantic's own error, naming the field
        SynthSettings(strategy="magic")


def test_the_pipelines_old_curate_and_synth_keys_are_read_as_the_sections(tmp_path: Path) -> None:
    config_file = tmp_path / "niche.yaml"
    config_file.write_text("pipeline:\n  curate:\n    seed: 4\n  synth:\n    teacher: local:smollm2-135m\n")
    with pytest.warns(DeprecationWarning, match="pipeline.curate is now the top-level `curate` section"):
        config = load_config(config_file)
    assert config.curate.seed == 4 and config.synth is not None and config.synth.teacher == "local:smollm2-135m"
    config_file.write_text("curate:\n  seed: 1\npipeline:\n  curate:\n    seed: 4\n")
    with pytest.raises(ConfigError, match="pipeline.curate and curate both given"):
        load_config(config_file)
