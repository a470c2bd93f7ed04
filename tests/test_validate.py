"""processor/validate.py: absurd values are one line naming key and value, refused before anything is written."""
import os

import pytest
import torch

from processor import configure
from torchlight.config import ConfigError
from torchlight.util import select_device

PRETRAIN = "pretrain_skeletonclr_swap"


@pytest.mark.parametrize("name, overrides, message", [
    (PRETRAIN, dict(grad_clip=-1.0), r"grad_clip must be a number >= 0 \(or null for no clipping\), got -1.0"),
    (PRETRAIN, dict(knn_k=[0, 10]), r"knn_k must be a list of integers >= 1, got \[0, 10\]"),
    ("knn_evaluation", dict(knn_k=[-5]), r"knn_k must be a list of integers >= 1, got \[-5\]"),
    (PRETRAIN, dict(model_args=dict(temperature=0.0)), "model_args.temperature must be a number > 0, got 0.0"),
    (PRETRAIN, dict(model_args=dict(momentum=1.5)), r"model_args.momentum \(the key encoder's\) must be in "
                                                    r"\[0, 1\], got 1.5"),
    (PRETRAIN, dict(model_args=dict(feature_dim=0)), "model_args.feature_dim must be an integer >= 1, got 0"),
    (PRETRAIN, dict(amp="bf61"), "amp must be one of off, bf16, fp16, not 'bf61'"),
    ("linear_evaluation", dict(stream="bones"), "stream must be one of joint, motion, bone, not 'bones'"),
    ("linear_evaluation", dict(weights=""), "weights '' names no file: give a checkpoint's path"),
    ("finetune_evaluation", dict(weights="nope.pt"), "weights nope.pt: no such file"),
    ("knn_evaluation", dict(weights="nope.pt"), "weights nope.pt: no such file"),
    (PRETRAIN, dict(resume="nope.pt"), "resume nope.pt: no such file"),
])
def test_absurd_values_are_refused_before_the_work_dir_is_written(demo_arrays, tiny, tmp_path, name, overrides,
                                                                  message):
    cls, cfg = tiny(name, demo_arrays, tmp_path / "run", **overrides)
    with pytest.raises(ConfigError, match=message) as info:
        cls(cfg)
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()


def test_pretraining_refuses_weights_it_would_ignore(demo_arrays, tiny, tmp_path):
    (tmp_path / "w.pt").write_bytes(b"")
    cls, cfg = tiny(PRETRAIN, demo_arrays, tmp_path / "run", weights=str(tmp_path / "w.pt"))
    with pytest.raises(ConfigError, match=f"weights {tmp_path / 'w.pt'}: pretraining starts from a random encoder "
                                          "and does not load weights; continue a pretraining with --resume"):
        cls(cfg)
    assert not (tmp_path / "run").exists()


def test_knn_k_larger_than_the_bank_is_refused_not_capped(demo_arrays, tiny, tmp_path):
    cls, cfg = tiny(PRETRAIN, demo_arrays, tmp_path / "run", knn_k=[5, 1000], eval_interval=1,
                    batch_size=8, model_args=dict(queue_size=16))
    with pytest.raises(ConfigError, match=r"knn_k \[1000\] is larger than the kNN bank of \d+ training clips"):
        cls(cfg)


def test_a_config_error_then_the_corrected_command_in_the_same_folder(demo_arrays, tiny, tmp_path):
    cls, cfg = tiny(PRETRAIN, demo_arrays, tmp_path / "run", grad_clip=-1.0, num_epoch=1,
                    batch_size=8, model_args=dict(queue_size=16))
    with pytest.raises(ConfigError):
        cls(cfg)
    cls, cfg = configure(PRETRAIN, dict(cfg, grad_clip=None))
    cls(cfg).start()
    assert os.path.isfile(tmp_path / "run" / "epoch1_model.pt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line():
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"device {spec!r}: this machine has no CUDA device torch can use"):
            select_device(spec)
