from pathlib import Path

import pytest

from helpers import cli
from tunesmith.config import load_config
from tunesmith.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "train.jsonl").write_text('{"prompt": "hi", "completion": "hello"}\n')
    path = tmp_path / "project.yaml"
    path.write_text(text)
    return path


def test_defaults_fill_every_field_and_paths_are_relative_to_the_project_file(tmp_path):
    config = load_config(write(tmp_path, "data:\n  train: train.jsonl\n"))
    assert config.task == "generation"
    assert config.model.base == "smollm2-135m-instruct"
    assert config.method.kind == "lora" and config.method.r == 16 and config.method.lora_dropout == 0.0
    assert config.train.lr == 2.0e-4 and config.train.epochs == 2
    assert config.data.max_seq_len == 1024
    assert config.data.train == str(tmp_path / "train.jsonl")
    assert config.output == "runs/project" or config.output.endswith(tmp_path.name)


def test_task_defaults_follow_the_task_when_overridden(tmp_path):
    config = load_config(write(tmp_path, "task: generation\ndata:\n  train: train.jsonl\n"),
                         ["task=classification"])
    assert config.model.base == "minilm-l6"
    assert config.train.lr == 5.0e-4  # LoRA on an encoder; full fine-tuning keeps 5e-5
    assert config.data.max_seq_len == 512
    assert "accuracy" in config.eval.metrics


def test_explicit_values_win_over_task_defaults_and_full_finetuning_lowers_lr(tmp_path):
    project = write(tmp_path, "data:\n  train: train.jsonl\ntrain:\n  lr: 0.001\n")
    assert load_config(project, ["method.kind=full"]).train.lr == 0.001
    assert load_config(write(tmp_path, "data:\n  train: train.jsonl\n"), ["method.kind=full"]).train.lr == 2.0e-5


def test_set_overrides_types_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(write(tmp_path, "data:\n  train: train.jsonl\n"),
                         ["train.epochs=1", "train.micro_batch_size=4", "output=/tmp/x", "data.train=other.jsonl",
                          "method.target_modules=[q_proj, v_proj]"])
    assert config.train.epochs == 1 and config.train.micro_batch_size == 4 and config.output == "/tmp/x"
    assert config.data.train == str(tmp_path / "other.jsonl")
    assert config.method.target_modules == ["q_proj", "v_proj"]


def test_unknown_key_names_key_line_and_valid_choices(tmp_path):
    project = write(tmp_path, "task: generation\ntrain:\n  epochs: 1\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(project)
    text = info.value.render()
    assert "train.learning_rate" in text and f"{project}:4" in text
    assert "lr" in text and "micro_batch_size" in text


def test_wrong_type_names_key_and_line(tmp_path):
    project = write(tmp_path, "data:\n  train: train.jsonl\ntrain:\n  epochs: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(project)
    assert "train.epochs" in info.value.render() and f"{project}:4" in info.value.render()


def test_invalid_choice_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "method:\n  kind: lorax\n"))
    assert "method.kind" in info.value.render() and "'dora'" in info.value.render()


def test_unknown_set_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(write(tmp_path, "data:\n  train: train.jsonl\n"), ["train.epoch=1"])


def test_cli_config_errors_exit_1_without_traceback(tmp_path):
    project = write(tmp_path, "data:\n  train: train.jsonl\nmodel:\n  bass: x\n")
    result = cli("train", project)
    assert result.returncode == 1
    assert "model.bass" in result.stderr and ":4" in result.stderr and "Traceback" not in result.stderr


def test_cli_missing_data_file_exits_1_naming_it(tmp_path):
    project = write(tmp_path, "data:\n  train: nowhere.jsonl\nmodel:\n  base: minilm-l6\n")
    result = cli("train", project, "--set", f"output={tmp_path / 'run'}")
    assert result.returncode == 1, result.stderr
    assert "nowhere.jsonl" in result.stderr and "Traceback" not in result.stderr


def test_cli_missing_project_file_and_bad_usage(tmp_path):
    result = cli("run", tmp_path / "missing.yaml")
    assert result.returncode == 1 and "missing.yaml" in result.stderr
    assert cli("run").returncode == 2


def test_a_yaml_list_or_broken_yaml_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "data:\n  train: [a\n"))
    assert "not valid YAML" in info.value.render()
