"""processor/processor.py: work-directory ownership, non-finite losses, exact resume, checkpoints, bad config."""
import os
import pickle
import shutil
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_io import hold_lock

from processor import configure
from processor.nonfinite import LossCheck, NonFiniteError
from processor.processor import Processor
from processor.schedule import progress_due, step_lr
from torchlight.config import ConfigError, load_yaml
from torchlight.io import WorkDirError

PRETRAIN = "pretrain_skeletonclr_swap"
SMALL = dict(batch_size=8, model_args=dict(queue_size=16))


@pytest.fixture(scope="module")
def small(demo_arrays, tmp_path_factory):
    """The first 24 train and 16 val clips of the demo arrays: three batches of 8 per epoch."""
    folder = tmp_path_factory.mktemp("small")
    for part, n in (("train", 24), ("val", 16)):
        np.save(folder / f"{part}_position.npy", np.load(f"{demo_arrays}/{part}_position.npy")[:n])
        with open(f"{demo_arrays}/{part}_label.pkl", "rb") as f:
            names, labels = pickle.load(f)
        with open(folder / f"{part}_label.pkl", "wb") as f:
            pickle.dump((names[:n], labels[:n]), f)
    return str(folder)


def with_nan(data, folder, part="train"):
    """Feeder args of a copy of `part` whose every clip holds a NaN (joint 1 of body 1, frame 0)."""
    os.makedirs(folder, exist_ok=True)
    x = np.load(f"{data}/{part}_position.npy")
    x[:, 0, 0, 0, 0] = np.nan
    np.save(f"{folder}/{part}_position.npy", x)
    shutil.copy(f"{data}/{part}_label.pkl", f"{folder}/{part}_label.pkl")
    return dict(data_path=f"{folder}/{part}_position.npy", label_path=f"{folder}/{part}_label.pkl")


def build(tiny, name, data, work_dir, **overrides):
    cls, cfg = tiny(name, data, work_dir, **overrides)
    if work_dir is None:
        cfg["work_dir"] = None
    return cls(cfg)


def pretrain(tiny, data, work_dir, **overrides):
    cls, cfg = tiny(PRETRAIN, data, work_dir, **{**SMALL, "num_epoch": 1, **overrides})
    proc = cls(cfg)
    proc.start()
    return proc


def test_a_run_owns_its_work_dir(small, tiny, tmp_path):
    pretrain(tiny, small, tmp_path / "run")
    assert not (tmp_path / "run" / "run.lock").exists()  # removed when the run ends
    with pytest.raises(WorkDirError, match="holds another run's files .epoch1_model.pt."):
        pretrain(tiny, small, tmp_path / "run", seed=2)
    before = (tmp_path / "run" / "epoch1_model.pt").read_bytes()
    resumed = pretrain(tiny, small, tmp_path / "run", num_epoch=2,
                       resume=str(tmp_path / "run" / "epoch1_model.pt"))
    assert resumed.start_epoch == 1 and (tmp_path / "run" / "epoch2_model.pt").is_file()
    assert (tmp_path / "run" / "epoch1_model.pt").read_bytes() == before
    build(tiny, PRETRAIN, small, tmp_path / "run", **SMALL, overwrite=True)  # allowed when asked for


def test_a_concurrent_second_run_fails_at_once_naming_the_holder(small, tiny, tmp_path):
    other = hold_lock(tmp_path / "run")
    try:
        with pytest.raises(WorkDirError, match=f"in use by pid {other.pid} on {socket.gethostname()} since "):
            build(tiny, PRETRAIN, small, tmp_path / "run", **SMALL)
    finally:
        other.kill()
        other.wait()
    assert os.listdir(tmp_path / "run") == ["run.lock"]  # nothing of the second run was written


def test_evaluation_writes_beside_its_weights_never_over_them(small, tiny, tmp_path):
    pretrain(tiny, small, tmp_path / "run")
    weights = tmp_path / "run" / "epoch1_model.pt"
    before = weights.read_bytes()
    with pytest.raises(WorkDirError, match="holds another run's files"):
        build(tiny, "linear_evaluation", small, tmp_path / "run", weights=str(weights))
    proc = build(tiny, "linear_evaluation", small, None, weights=str(weights), num_epoch=1, save_interval=1,
                 model_args=dict(num_class=12))
    proc.start()
    assert proc.cfg["work_dir"] == str(tmp_path / "run" / "linear")
    assert {"eval_epoch1.pt", "result.json", "config.yaml"} <= set(os.listdir(tmp_path / "run" / "linear"))
    assert not [f for f in os.listdir(tmp_path / "run" / "linear") if f.endswith("_model.pt")]
    assert weights.read_bytes() == before


def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_the_last_checkpoint(small, tiny, tmp_path):
    pretrain(tiny, small, tmp_path / "run")
    before = (tmp_path / "run" / "epoch1_model.pt").read_bytes()
    last = str(tmp_path / "run" / "epoch1_model.pt")
    with pytest.raises(NonFiniteError, match=f"loss nan at epoch 2, step 1: training stopped; last checkpoint {last}"):
        pretrain(tiny, small, tmp_path / "run", num_epoch=2, resume=last, resume_override=True,
                 train_feeder_args=with_nan(small, tmp_path / "nan"))
    assert (tmp_path / "run" / "epoch1_model.pt").read_bytes() == before
    assert not (tmp_path / "run" / "epoch2_model.pt").exists()


def test_non_finite_loss_is_read_once_per_epoch_and_names_the_first_bad_step():
    w = torch.nn.Parameter(torch.ones(1))
    run = SimpleNamespace(step_in_epoch=0, epoch=4, last_checkpoint="c.pt", cfg=dict(grad_clip=None),
                          optimizer=torch.optim.SGD([w], lr=0.1), scaler=torch.amp.GradScaler("cpu", enabled=False),
                          loss_check=LossCheck(torch.device("cpu")))
    Processor.optimize(run, (w * 2.0).sum())
    run.loss_check.check(4, "c.pt")  # finite so far: nothing raised
    assert float(w.detach()) == pytest.approx(0.8)  # 1 - 0.1 * 2
    for value in (float("inf"), float("nan")):
        Processor.optimize(run, (w * value).sum())
    assert run.step_in_epoch == 3
    with pytest.raises(NonFiniteError, match="loss inf at epoch 5, step 2: training stopped; last checkpoint c.pt"):
        run.loss_check.check(4, "c.pt")


def test_non_finite_scores_write_no_result(small, tiny, tmp_path):
    cls, cfg = tiny("linear_evaluation", small, tmp_path, num_epoch=1, model_args=dict(num_class=12),
                    test_feeder_args=with_nan(small, tmp_path / "nan", "val"))
    with pytest.raises(NonFiniteError, match=r"outputs for 16 of 16 clips of .*nan/val_position.npy hold NaN"):
        cls(cfg).start()
    assert not (tmp_path / "result.json").exists()


def tensors(x, path=""):
    """{key path: tensor} of every tensor in a nested checkpoint."""
    if isinstance(x, torch.Tensor):
        return {path: x}
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, (list, tuple)) else []
    return {k: v for key, value in items for k, v in tensors(value, f"{path}/{key}").items()}


def test_resume_with_two_workers_and_evaluation_is_bitwise_exact(small, tiny, tmp_path):
    # Persistent evaluation workers and per-epoch training workers; dropout draws from the global stream.
    args = dict(num_epoch=3, save_interval=1, eval_interval=1, knn_k=[1], num_workers=2,
                model_args=dict(dropout=0.3))
    pretrain(tiny, small, tmp_path / "straight", **args)
    pretrain(tiny, small, tmp_path / "stopped", **dict(args, num_epoch=1))
    pretrain(tiny, small, tmp_path / "stopped", **args, resume=str(tmp_path / "stopped" / "epoch1_model.pt"))
    a, b = (tensors(torch.load(tmp_path / run / "epoch3_model.pt", weights_only=False))
            for run in ("straight", "stopped"))
    assert a.keys() == b.keys() and len(a) > 100
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("overrides, message", [
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(test_batch_size=0), "test_batch_size must be an integer >= 1, got 0"),
    (dict(model_args=dict(queue_size=4)), "model_args.queue_size 4 must be at least the global batch_size 8"),
    (dict(model_args=dict(queue_size=-8)), "model_args.queue_size must be an integer >= 1 or auto, got -8"),
    (dict(model_args=dict(swap_params=[2, 3, 7, 11, 1, 1.0])), r"model_args.swap_params \[2, 3, 7, 11, 1, 1.0\]"),
    (dict(model_args=dict(swap_params=[[2, 3, 7, 11, 0, 1.0]])), "each row must be"),
    (dict(model_args=dict(swap_params=[[2, 3, 7, 11, -1, 1.0]])), "each row must be"),
    (dict(model_args=dict(swap_params=[[2, 3, 7, 11, 1, float("nan")]])), "a finite weight"),
    (dict(model_args=dict(hidden_channels="four")),
     "key 'encoder.hidden_channels' in encoder: expected int like the default 16, got 'four'"),
])
def test_bad_config_values_are_one_line_errors_before_training(small, tiny, tmp_path, overrides, message):
    cls, cfg = tiny(PRETRAIN, small, tmp_path, **{**SMALL, **overrides,
                                                       "model_args": {**SMALL["model_args"],
                                                                      **overrides.get("model_args", {})}})
    with pytest.raises(ValueError, match=message) as info:
        cls(cfg)
    assert "\n" not in str(info.value)


def test_labels_beyond_num_class_stop_before_training(small, tiny, tmp_path):
    cls, cfg = tiny("finetune_evaluation", small, tmp_path, num_epoch=1, model_args=dict(num_class=5))
    with pytest.raises(ValueError, match=r"train_label.pkl: label \d+ of clip \d+ .* out of range for "
                                         "model_args.num_class 5"):
        cls(cfg)


def test_damaged_or_foreign_checkpoints_are_one_line_errors(small, tiny, tmp_path):
    pretrain(tiny, small, tmp_path / "run")
    good = tmp_path / "run" / "epoch1_model.pt"
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"epoch": 1}, tmp_path / "nomodel.pt")
    cases = [(tmp_path / "empty.pt", "is not a readable checkpoint"),
             (tmp_path / "nomodel.pt", "is not a training checkpoint of this project")]
    for path, message in cases:
        with pytest.raises(ConfigError, match=f"resume checkpoint {path} {message}"):
            pretrain(tiny, small, tmp_path / "a", num_epoch=2, resume=str(path))
        with pytest.raises(ConfigError, match=f"weights file {path}"):
            build(tiny, "linear_evaluation", small, tmp_path / "b", weights=str(path))
    with pytest.raises(ConfigError, match="was trained with encoder.hidden_channels 4, this run has 8"):
        pretrain(tiny, small, tmp_path / "c", num_epoch=2, resume=str(good),
                 model_args=dict(SMALL["model_args"], hidden_channels=8))
    with pytest.raises(ConfigError, match=f"resume checkpoint {good} is at epoch 1, num_epoch is 1: nothing left"):
        pretrain(tiny, small, tmp_path / "d", resume=str(good))
    cls, cfg = tiny("linear_evaluation", small, tmp_path / "lin", weights=str(good), num_epoch=1,
                    save_interval=1, model_args=dict(num_class=12))
    cls(cfg).start()
    with pytest.raises(ConfigError, match="was written by LinearEvaluation; this run is Pretrain"):
        pretrain(tiny, small, tmp_path / "e", num_epoch=2, resume=str(tmp_path / "lin" / "eval_epoch1.pt"))


def test_linear_evaluation_without_epochs_is_an_error(small, tiny, tmp_path):
    cls, cfg = tiny("linear_evaluation", small, tmp_path, num_epoch=0, model_args=dict(num_class=12))
    with pytest.raises(ConfigError, match="num_epoch must be >= 1 for LinearEvaluation, got 0"):
        cls(cfg)


def progress_reads(steps, seconds_per_step, known=True):
    """The steps at which the progress bar reads the loss in an epoch of equally long steps."""
    now = shown = 0.0
    reads = []
    for step in range(steps):
        now += seconds_per_step
        if progress_due(step, steps if known else None, now - shown):
            shown = now
            reads.append(step)
    return reads


def test_progress_bar_reads_the_loss_on_the_first_and_last_step_and_once_a_second():
    assert progress_reads(15, 0.001) == [0, 14]  # a short epoch ends showing its last loss, not step 0's
    assert progress_reads(15, 0.25) == [0, 4, 8, 12, 14]
    assert progress_reads(15, 0.25, known=False) == [0, 4, 8, 12]  # a loader without len
    assert progress_reads(1, 5.0) == [0]
    assert len(progress_reads(10_000, 0.001)) == 11  # a long fast epoch: ~ once a second, not every step


def test_step_schedule_with_the_releases_linear_warm_up():
    assert [step_lr(0.1, [50, 70], e) for e in (0, 49, 50, 70)] == [0.1, 0.1, 0.1 * 0.1, 0.1 * 0.1 ** 2]
    warm = [step_lr(0.1, [50], e, warm_up_epoch=10) for e in (0, 4, 9, 10, 50)]
    assert warm == pytest.approx([0.01, 0.05, 0.1, 0.1, 0.01])


def test_release_style_finetune_and_semi_configs_differ_from_ours_only_as_the_release():
    def finetune(name):
        return configure("finetune_evaluation", load_yaml(f"config/{name}.yaml"))[1]
    ours = finetune("finetune/finetune_skelemixclr_multi_swap_ntu60_xsub")
    release = finetune("finetune/finetune_skelemixclr_multi_swap_ntu60_xsub_release")
    assert (ours["nesterov"], ours["warm_up_epoch"]) == (False, 0)
    assert (release["nesterov"], release["warm_up_epoch"]) == (True, 10)
    assert {k for k in ours if ours[k] != release[k]} == {"nesterov", "warm_up_epoch", "work_dir"}
    ours = finetune("semi/semi1_skelemixclr_multi_swap_ntu60_xsub")
    release = finetune("semi/semi1_skelemixclr_multi_swap_ntu60_xsub_release")
    assert ours["weight_decay"] == 1e-4 and release["weight_decay"] == 0.0
    assert {k for k in ours if ours[k] != release[k]} == {"weight_decay", "work_dir"}


def test_resuming_an_older_checkpoint_refuses_to_replace_later_ones(small, tiny, tmp_path):
    pretrain(tiny, small, tmp_path / "run", num_epoch=3, save_interval=1)
    later = (tmp_path / "run" / "epoch3_model.pt").read_bytes()
    first = str(tmp_path / "run" / "epoch1_model.pt")
    with pytest.raises(ConfigError, match=f"resume checkpoint {first} is at epoch 1 but {tmp_path / 'run'} holds "
                                          r"later ones \(epoch2_model.pt, epoch3_model.pt\), which resuming would "
                                          "replace: resume the latest, or give --overwrite true"):
        pretrain(tiny, small, tmp_path / "run", num_epoch=3, save_interval=1, resume=first)
    assert (tmp_path / "run" / "epoch3_model.pt").read_bytes() == later
    pretrain(tiny, small, tmp_path / "run", num_epoch=2, resume=first, overwrite=True)  # asked for: retrained


@pytest.mark.parametrize("overrides, message", [
    (dict(model_args=dict(hidden_channels=8)), "encoder.hidden_channels 4, this run has 8"),
    (dict(batch_size=16, model_args=dict(queue_size=16)), "batch_size 8, this run has 16"),
    (dict(method="skeletonclr"), "method 'skelemixclr', this run has 'skeletonclr'"),
])
def test_resuming_with_another_method_width_or_batch_is_refused(small, tiny, tmp_path, overrides, message):
    pretrain(tiny, small, tmp_path / "run")
    path = str(tmp_path / "run" / "epoch1_model.pt")
    name = "pretrain" if "method" in overrides else PRETRAIN
    cls, cfg = tiny(name, small, tmp_path / "run", **{**SMALL, "num_epoch": 2, "resume": path, **overrides,
                                                      "model_args": {**SMALL["model_args"],
                                                                     **overrides.get("model_args", {})}})
    with pytest.raises(ConfigError, match=f"resume checkpoint {path} was trained with {message}: resume with the "
                                          "checkpoint's value, or start a new --work_dir"):
        cls(cfg)


@pytest.mark.parametrize("overrides, message", [
    (dict(seed=7), "seed 1, this run has 7"),
    (dict(base_lr=0.05), "base_lr 0.1, this run has 0.05"),
    (dict(amp="bf16"), "amp 'off', this run has 'bf16'"),
    (dict(train_feeder_args=dict(data_path="OTHER")), "train_feeder_args.data_path '.*', this run has '.*OTHER'"),
])
def test_resuming_with_another_seed_lr_amp_or_data_is_refused_unless_asked(small, tiny, tmp_path, overrides,
                                                                            message):
    """Before: accepted silently, and config.yaml rewritten as if the whole run had used them."""
    pretrain(tiny, small, tmp_path / "run")
    path = str(tmp_path / "run" / "epoch1_model.pt")
    if "train_feeder_args" in overrides:  # the same clips under another name
        shutil.copytree(small, tmp_path / "copy")
        overrides = dict(train_feeder_args=dict(data_path=str(tmp_path / "copy" / "train_position.npy")))
        message = message.replace("OTHER", "train_position.npy")
    cls, cfg = tiny(PRETRAIN, small, tmp_path / "run", **{**SMALL, "num_epoch": 2, "resume": path, **overrides})
    with pytest.raises(ConfigError, match=f"resume checkpoint {path} was started with {message}: resume with the "
                                          "checkpoint's value, or give --resume_override true"):
        cls(cfg)
    cls, cfg = tiny(PRETRAIN, small, tmp_path / "run", **{**SMALL, "num_epoch": 2, "resume": path, **overrides,
                                                          "resume_override": True})
    assert cls(cfg).start_epoch == 1


def test_resume_takes_the_schedule_from_the_checkpoint(small, tiny, tmp_path):
    """Before: a run started with --num_steps 6 and resumed without it switched to the config's schedule (here
    num_steps 30) and its mix ramp jumped."""
    def run(work_dir, **overrides):
        cls, cfg = tiny(PRETRAIN, small, work_dir, **SMALL, **overrides)
        proc = cls(cfg)
        proc.start()
        return proc
    first = run(tmp_path / "run", num_steps=6, mix_warmup=0.5, save_interval=1)
    assert first.cfg["num_epoch"] == 2
    resumed = run(tmp_path / "again", num_steps=30, mix_warmup=0.2, resume=str(tmp_path / "run" / "epoch1_model.pt"))
    assert (resumed.cfg["num_steps"], resumed.cfg["num_epoch"], resumed.cfg["mix_warmup"]) == (6, 2, 0.5)
    assert [s["train/loss"] for s in resumed.stats] == [s["train/loss"] for s in first.stats[1:]]
    log = (tmp_path / "again" / "log.txt").read_text()
    assert "num_steps 6 from the checkpoint (config: 30)" in log and "mix_warmup 0.5 from the checkpoint" in log
