"""When Liger's kernels are used (train.liger): the decision is made without a GPU; tests/test_cuda.py runs them."""

import pytest
import torch

from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.train import liger


def test_auto_uses_liger_only_where_it_can_run():
    assert liger.resolve("auto", "cpu", "llama", None) is False
    assert liger.resolve(False, "cuda", "llama", None) is False
    assert "CUDA" in liger.why_not("cpu", "llama", None)
    if not liger.installed():
        assert "not installed" in liger.why_not("cuda", "llama", None)
        assert liger.resolve("auto", "cuda", "llama", None) is False
    else:  # a CUDA machine with the [liger] extra
        assert liger.why_not("cuda", "llama", None) is None
        assert "autocast" in liger.why_not("cuda", "llama", torch.bfloat16)
        assert "no kernels" in liger.why_not("cuda", "not-a-model", None)


def test_liger_true_where_it_cannot_run_is_a_config_error_with_the_fix():
    with pytest.raises(ConfigError) as caught:
        liger.resolve(True, "cpu", "llama", None)
    assert "train.liger is true" in str(caught.value) and "tunesmith[liger]" in caught.value.fix


def test_liger_true_on_a_cpu_stops_the_run_before_anything_is_prepared(tmp_path, tiny_llama):
    import tunesmith
    from conftest import make_pairs, write_jsonl

    data = write_jsonl(tmp_path / "train.jsonl", make_pairs(20))
    with pytest.raises(ConfigError) as caught:
        tunesmith.train({"name": "x", "data": {"train": str(data)}, "model": {"base": str(tiny_llama)},
                         "train": {"liger": True, "device": "cpu"}, "output": str(tmp_path / "run")})
    assert "CUDA" in str(caught.value)
    assert not (tmp_path / "run" / "data").exists()


def test_train_liger_setting_is_validated():
    from tunesmith.config import load_config

    assert load_config(raw={"name": "x", "data": {"train": "t.jsonl"}, "train": {"liger": False}}).train.liger is False
    assert load_config(raw={"name": "x", "data": {"train": "t.jsonl"}}).train.liger == "auto"
    with pytest.raises(ConfigError):
        load_config(raw={"name": "x", "data": {"train": "t.jsonl"}, "train": {"liger": "sometimes"}})


def test_the_train_api_survives_importing_the_train_package(tmp_path, tiny_llama):
    """`tunesmith.train(config)` trains even after a module of the tunesmith.train package is imported (which binds
    the package to that name), and the dotted import of such a module works too."""
    import tunesmith
    import tunesmith.train.loss as loss

    assert loss.CHUNK_ELEMENTS > 0
    assert callable(tunesmith.train)
    with pytest.raises(TunesmithError) as caught:  # it reached the pipeline: the data file is checked first
        tunesmith.train({"name": "x", "data": {"train": str(tmp_path / "missing.jsonl")},
                         "model": {"base": str(tiny_llama)}, "output": str(tmp_path / "run")})
    assert "missing.jsonl" in str(caught.value)
