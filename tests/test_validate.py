"""processor/validate.py: absurd values are one line naming key and value, refused before anything is written."""
import os

import pytest
import torch

import main
from processor import configure
from torchlight.config import ConfigError, parse_overrides
from torchlight.util import select_device

PRETRAIN = "pretrain_skeletonclr_swap"


@pytest.mark.parametrize("name, overrides, message", [
    (PRETRAIN, dict(grad_clip=-1.0), r"grad_clip must be a number >= 0 \(or null for no clipping\), got -1.0"),
    (PRETRAIN, dict(knn_k=[0, 10]), r"knn_k must be a non-empty list of integers >= 1, got \[0, 10\]"),
    ("knn_evaluation", dict(knn_k=[-5]), r"knn_k must be a non-empty list of integers >= 1, got \[-5\]"),
    ("knn_evaluation", dict(knn_k=[]), r"knn_k must be a non-empty list of integers >= 1, got \[\]"),
    (PRETRAIN, dict(num_steps=True), r"num_steps must be an integer >= 1 \(or null to train num_epoch epochs\), "
                                     "got True"),
    (PRETRAIN, dict(model_args=dict(queue_size=-64)), "model_args.queue_size must be an integer >= 1 or auto, "
                                                      "got -64"),
    (PRETRAIN, dict(train_feeder_args=dict(data_path="nope/train_position.npy")),
     r"train_feeder_args.data_path nope/train_position.npy: no such file \(relative to the current directory "),
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


def test_a_missing_data_file_creates_no_work_dir(demo_arrays, tmp_path, monkeypatch):
    """Before: ./work_dir/pretrain was made (and its log) before the feeder found no file."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="^error: train_feeder_args.data_path missing.npy: no such file"):
        main.main([PRETRAIN, "--train_feeder_args.data_path", "missing.npy", "--num_epoch", "1"])
    assert os.listdir(tmp_path) == []


def test_an_empty_value_is_refused_not_null():
    """`--weights "$CKPT"` with CKPT unset: before, '' read as null and a random encoder was evaluated."""
    with pytest.raises(SystemExit, match="^error: weights '' names no file"):
        main.main(["linear_evaluation", "--weights", ""])
    assert parse_overrides(["--weights", ""]) == {"weights": ""}
    assert parse_overrides(["--weights="]) == {"weights": ""}


def test_bare_num_steps_is_refused(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="num_steps must be an integer >= 1"):
        main.main([PRETRAIN, "--num_steps", "--seed", "2"])
    assert os.listdir(tmp_path) == []


def test_home_in_work_dir_is_expanded(demo_arrays, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    cls, cfg = tiny("knn_evaluation", demo_arrays, "~/knn", knn_k=[1])
    cls(cfg).start()
    assert (tmp_path / "home" / "knn" / "knn.json").is_file() and not (tmp_path / "~").exists()


def test_an_error_after_the_work_dir_opened_ends_its_log(demo_arrays, tiny, tmp_path):
    cls, cfg = tiny(PRETRAIN, demo_arrays, tmp_path / "run", batch_size=8, model_args=dict(queue_size=12))
    with pytest.raises(ConfigError) as info:
        cls(cfg)
    log = (tmp_path / "run" / "log.txt").read_text().splitlines()
    assert log[-1].endswith(f"error: {info.value}") and "not divisible" in log[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line():
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"device {spec!r}: this machine has no CUDA device torch can use"):
            select_device(spec)


def test_a_full_disk_during_a_checkpoint_is_one_line_that_ends_the_log(demo_arrays, tmp_path, monkeypatch):
    """Before: a traceback."""
    import errno

    import processor.processor as loop

    def full(state, path):
        raise OSError(errno.ENOSPC, "No space left on device", path)
    monkeypatch.setattr(loop, "write_checkpoint", full)
    argv = [PRETRAIN, "--work_dir", str(tmp_path / "run"), "--num_epoch", "1", "--batch_size", "16",
            "--num_workers", "0", "--progress", "false", "--model_args", "{hidden_channels: 4, hidden_dim: 16, "
            "queue_size: 32}", "--train_feeder_args", f"{{data_path: {demo_arrays}/train_position.npy, label_path: "
            f"{demo_arrays}/train_label.pkl, frames: 16}}"]
    with pytest.raises(SystemExit, match="^error: \\[Errno 28\\] No space left on device: .*epoch1_model.pt'$"):
        main.main(argv)
    assert "No space left on device" in (tmp_path / "run" / "log.txt").read_text().splitlines()[-1]
