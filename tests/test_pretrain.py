"""Pretraining end to end on demo data with a tiny model: loss goes down, checkpoints resume exactly."""
import math
import os

import numpy as np
import pytest
import torch
from conftest import tiny_run

from processor import configure
from processor.state import restore_cuda_rng, rng_state
from torchlight.checkpoint import read_checkpoint, write_checkpoint


def test_skelemixclr_plus_two_epochs_lower_the_loss(demo_arrays, tiny, tmp_path):
    # queue = batch: after the first step the queue holds real keys only, so epochs compare fairly
    cls, cfg = tiny("pretrain_skeletonclr_multi_swapv2", demo_arrays, tmp_path, num_epoch=2, save_interval=2,
                    batch_size=8, model_args=dict(queue_size=8), eval_interval=2, knn_k=[1, 5])
    proc = cls(cfg)
    proc.start()
    first, second = proc.stats
    assert second["train/loss"] < first["train/loss"]
    assert {"train/loss_ins", "train/loss_mix", "knn/top1_k1", "knn/top1_k5"} <= set(second)
    assert 0 <= second["knn/top1_k5"] <= 100
    state = torch.load(tmp_path / "epoch2_model.pt", weights_only=False)
    assert state["epoch"] == 2 and state["config"]["model_args"]["swap_params"] == [[2, 3, 7, 11, 3, 1.0]]
    assert "encoder_q.fc.3.weight" in state["model"] and state["model"]["queue"].shape == (128, 8)
    assert os.path.isfile(tmp_path / "log.txt") and os.listdir(tmp_path / "tensorboard")
    assert not [f for f in os.listdir(tmp_path) if ".partial-" in f]


def test_resume_continues_exactly(demo_arrays, tiny, tmp_path):
    # The kNN monitor after every epoch must not change what a resumed run draws.
    args = dict(num_epoch=3, save_interval=1, eval_interval=1, knn_k=[1],
                model_args=dict(queue_size=64, dropout=0.3))
    cls, cfg = tiny("pretrain_skeletonclr_swap", demo_arrays, tmp_path / "straight", **args)
    straight = cls(cfg)
    straight.start()
    cls, cfg = tiny("pretrain_skeletonclr_swap", demo_arrays, tmp_path / "resumed", **args,
                    resume=str(tmp_path / "straight" / "epoch1_model.pt"))
    resumed = cls(cfg)
    assert resumed.start_epoch == 1
    resumed.start()
    assert [s["train/loss"] for s in resumed.stats] == [s["train/loss"] for s in straight.stats[1:]]
    for (name, a), b in zip(straight.raw_model.state_dict().items(), resumed.raw_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_device_augmentation_trains(demo_arrays, tiny, tmp_path):
    cls, cfg = tiny("pretrain_skeletonclr", demo_arrays, tmp_path, num_epoch=1, device_augment=True,
                    model_args=dict(queue_size=64))
    proc = cls(cfg)
    batch = next(iter(proc.train_loader))
    assert len(batch[0]) == 1  # each clip travels once; the query and key views are made on the device
    query, key = proc.prepare(batch)
    assert query.shape == key.shape == batch[0][0].shape and not torch.equal(query, key)
    proc.start()
    assert proc.train_loader.dataset.augment is False and proc.stats[0]["train/loss"] > 0


def first_step_views(demo_arrays, tiny, tmp_path, amp):
    """The views SkeleMixCLR+ receives in its first training step with device augmentation, motion stream."""
    cls, cfg = tiny("pretrain_skeletonclr_multi_swapv2", demo_arrays, tmp_path / amp, num_epoch=1, amp=amp,
                    device_augment=True, stream="motion", model_args=dict(queue_size=64))
    proc = cls(cfg)
    seen, forward = [], proc.model.forward

    def recording(views, **kwargs):
        seen.append([v.detach().clone() for v in views])
        return forward(views, **kwargs)

    proc.model.forward = recording
    proc.train_epoch(0)
    return seen[0]


def test_device_augmentation_under_amp_gives_fp32_inputs(demo_arrays, tiny, tmp_path):
    """Crop, shear and streams run outside autocast: bf16 sees the fp32 path's inputs, bit for bit."""
    reference = first_step_views(demo_arrays, tiny, tmp_path, "off")
    views = first_step_views(demo_arrays, tiny, tmp_path, "bf16")
    assert len(views) == 2  # query and key
    for v, ref in zip(views, reference):
        assert v.dtype == torch.float32
        assert torch.equal(v, ref)


@pytest.fixture(scope="module")
def checkpoint(demo_arrays, tmp_path_factory):
    """Epoch-1 checkpoint of a tiny SkeletonCLR run with amp off."""
    work = tmp_path_factory.mktemp("amp_off")
    cls, cfg = configure("pretrain_skeletonclr", tiny_run(demo_arrays, work, num_epoch=1, device="cpu",
                                                          model_args=dict(queue_size=64)))
    cls(cfg).start()
    return str(work / "epoch1_model.pt")


def test_resume_touches_only_this_ranks_gpu_generator(demo_arrays, tiny, tmp_path, checkpoint, monkeypatch):
    """A checkpoint of 3 GPUs' states resumes on a CPU rank (or one GPU) without an IndexError."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((state, device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: calls.append(("all", states)))
    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(3)]
    state = read_checkpoint(checkpoint, "checkpoint")
    state["rng"]["cuda"] = states
    write_checkpoint(state, str(tmp_path / "three_gpus.pt"))  # with the checksum of the changed content
    cls, cfg = tiny("pretrain_skeletonclr", demo_arrays, tmp_path / "w", num_epoch=2, device="cpu",
                    model_args=dict(queue_size=64))
    proc = cls(cfg)
    proc.resume(str(tmp_path / "three_gpus.pt"))
    assert calls == [] and proc.start_epoch == 1
    # The restore logic on a GPU rank: its own entry of an old list, the one saved state of ours.
    restore_cuda_rng(states, torch.device("cuda", 1))
    restore_cuda_rng(states[:1], torch.device("cuda", 1))  # saved with fewer GPUs: nothing to restore
    restore_cuda_rng(states[2], torch.device("cuda", 0))
    assert [(s[0].item(), d) for s, d in calls] == [(1, torch.device("cuda", 1)), (2, torch.device("cuda", 0))]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_checkpoint_holds_this_gpus_generator_only(demo_arrays, tiny, tmp_path):
    cls, cfg = tiny("pretrain_skeletonclr", demo_arrays, tmp_path, num_epoch=1, device="cuda:0",
                    model_args=dict(queue_size=64))
    proc = cls(cfg)
    assert torch.equal(rng_state(proc.generator, proc.device)["cuda"], torch.cuda.get_rng_state(0))


def test_fp16_resumes_a_checkpoint_written_with_amp_off(demo_arrays, tiny, tmp_path, checkpoint):
    cls, cfg = tiny("pretrain_skeletonclr", demo_arrays, tmp_path, num_epoch=2, device="cpu", amp="fp16",
                    model_args=dict(queue_size=64), resume=checkpoint, resume_override=True)
    proc = cls(cfg)
    assert proc.start_epoch == 1 and proc.scaler.is_enabled() and proc.scaler.get_scale() == 2.0 ** 16


def test_compile_targets_are_named_by_the_processor(demo_arrays, tiny, tmp_path):
    cls, cfg = tiny("pretrain_skeletonclr", demo_arrays, tmp_path / "pre", num_epoch=1)
    proc = cls(cfg)
    assert proc.compile_targets() == [proc.raw_model.encoder_q, proc.raw_model.encoder_k]
    cls, cfg = tiny("linear_evaluation", demo_arrays, tmp_path / "lin", num_epoch=1, model_args=dict(num_class=12))
    linear = cls(cfg)
    assert linear.compile_targets() == [linear.raw_model]
    assert (linear.ordered_train_loader.dataset is linear.train_loader.dataset  # the training clips built once
            and linear.cached is None and linear.stats == [] and linear.history == [])


def test_small_data_recipe_derives_epochs_queue_and_key_momentum(demo_arrays, tiny, tmp_path):
    """num_steps -> epochs, queue_size auto -> half an epoch of keys, cosine key momentum from base to 1."""
    cls, cfg = tiny("pretrain_skeletonclr", demo_arrays, tmp_path, num_steps=10, momentum_schedule="cosine",
                    batch_size=16, model_args=dict(queue_size="auto", momentum=0.9))
    proc = cls(cfg)
    clips, steps = len(proc.train_loader.dataset), len(proc.train_loader)
    assert steps == clips // 16 and proc.cfg["num_epoch"] == -(-10 // steps)
    assert proc.raw_model.queue_size == 16 * max(1, clips // 16 // 2)
    seen = []
    update = proc.raw_model._momentum_update_key_encoder
    proc.raw_model._momentum_update_key_encoder = lambda m: (seen.append(m), update(m))[1]
    proc.start()
    total = proc.cfg["num_epoch"] * steps
    assert seen == pytest.approx([1 - 0.1 * (math.cos(math.pi * i / total) + 1) / 2 for i in range(total)])
    written = read_checkpoint(str(tmp_path / f"epoch{proc.cfg['num_epoch']}_model.pt"), "checkpoint")
    assert written["config"]["model_args"]["queue_size"] == proc.raw_model.queue_size  # resolved, recorded


def test_mix_warmup_weighs_the_mixes_losses_by_progress(demo_arrays, tiny, tmp_path):
    """mix_warmup w: loss = loss_ins + min(1, progress / w) * loss_mix, progress = step / all steps."""
    cls, cfg = tiny("pretrain_skeletonclr_multi_swapv2", demo_arrays, tmp_path, num_epoch=2, mix_warmup=0.5,
                    batch_size=16, model_args=dict(queue_size=32))
    proc = cls(cfg)
    seen, train_step = [], proc.train_step

    def record(views):
        out = train_step(views)
        seen.append({k: v.detach().clone() for k, v in out.items()})
        return out
    proc.train_step = record
    proc.start()
    total = len(seen)
    for i, out in enumerate(seen):
        weight = min(1.0, i / total / 0.5)
        torch.testing.assert_close(out["loss"], out["loss_ins"] + weight * out["loss_mix"])
    assert seen[0]["loss"] == seen[0]["loss_ins"] and total == 2 * len(proc.train_loader)


def test_a_failing_monitor_loses_no_checkpoint(demo_arrays, tiny, tmp_path):
    import shutil
    os.makedirs(tmp_path / "nan")
    val = np.load(f"{demo_arrays}/val_position.npy")
    val[3, 0, 0, 0, 0] = np.nan  # one validation clip
    np.save(tmp_path / "nan" / "val_position.npy", val)
    shutil.copy(f"{demo_arrays}/val_label.pkl", tmp_path / "nan" / "val_label.pkl")
    cls, cfg = tiny("pretrain_skeletonclr", demo_arrays, tmp_path / "run", num_epoch=2, eval_interval=1,
                    save_interval=1, knn_k=[1], batch_size=8, model_args=dict(queue_size=16),
                    test_feeder_args=dict(data_path=str(tmp_path / "nan" / "val_position.npy"),
                                          label_path=str(tmp_path / "nan" / "val_label.pkl")))
    cls(cfg).start()
    assert {"epoch1_model.pt", "epoch2_model.pt"} <= set(os.listdir(tmp_path / "run"))
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("monitor failed, training goes on") == 2
    assert f"warning: epoch 2: the Pretrain monitor failed, training goes on (last checkpoint " \
           f"{tmp_path / 'run' / 'epoch2_model.pt'}): the encoder's outputs for 1 of" in log


def test_mix_warmup_outside_zero_one_is_refused(demo_arrays, tiny, tmp_path):
    from torchlight.config import ConfigError
    cls, cfg = tiny("pretrain_skeletonclr_multi_swapv2", demo_arrays, tmp_path, mix_warmup=1.5)
    with pytest.raises(ConfigError, match=r"mix_warmup must be a share of training in \[0, 1\], got 1.5"):
        cls(cfg)


def test_loss_over_chance_during_mix_warmup_is_that_of_the_unweighted_loss(demo_arrays, tiny, tmp_path):
    cls, cfg = tiny("pretrain_skeletonclr_multi_swapv2", demo_arrays, tmp_path, num_epoch=1, mix_warmup=1.0,
                    batch_size=16, model_args=dict(queue_size=32))
    proc = cls(cfg)
    proc.start()
    stats, chance = proc.stats[0], sum(proc.raw_model.chance_losses().values())
    assert stats["train/loss"] < stats["train/loss_ins"] + stats["train/loss_mix"]  # ramped
    assert stats["health/loss_over_chance"] == pytest.approx(
        (stats["train/loss_ins"] + stats["train/loss_mix"]) / chance)


def test_a_model_returning_only_its_loss_trains(demo_arrays, tiny, tmp_path):
    """Pretraining reads only the documented interface: a model without loss parts (no loss_ins) trains and logs
    no chance ratio instead of failing."""
    cls, cfg = tiny("pretrain_skeletonclr", demo_arrays, tmp_path, num_epoch=1, batch_size=16,
                    model_args=dict(queue_size=32))
    proc = cls(cfg)
    forward = proc.raw_model.forward
    proc.raw_model.forward = lambda *args, **kwargs: {"loss": forward(*args, **kwargs)["loss"]}
    proc.start()
    assert "train/loss" in proc.stats[0] and not any(k.endswith("_over_chance") for k in proc.stats[0])
