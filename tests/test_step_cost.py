"""tools/step_cost.py: a step's FLOPs against the encoder's own forward counted apart, for any encoder."""
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from net.encoders import build_encoder
from tools.step_cost import step_cost

SMALL = "config/ucla/{}_ucla_xview_small.yaml"
TINY = {"encoder.hidden_channels": 4, "encoder.hidden_dim": 8, "batch_size": 8, "model_args.queue_size": 16}


def forward_flops(encoder_args, batch):
    """FLOPs of one encoder forward on `batch` NW-UCLA-shaped clips (32 frames, 20 joints, one body)."""
    encoder = build_encoder(dict(encoder_args), layout="kinect-v1")
    with FlopCounterMode(display=False) as counter:
        encoder(torch.zeros(batch, 3, 32, 20, 1))
    return counter.get_total_flops()


@pytest.mark.parametrize("config, passes", [("skeletonclr", 1), ("skelemixclr_multi_swap", 4)])
def test_step_flops_count_every_encoder_pass(config, passes):
    """A step is the key encoder's forward (F) and `passes` query passes forward and backward (~3F each: the
    backward computes input and weight gradients); heads, SkeleMix's pooling and losses add under F at this size."""
    cost = step_cost(SMALL.format(config), TINY, iters=1, warmup=0)
    f = forward_flops(dict(name="st_gcn", hidden_channels=4, hidden_dim=8, dropout=0.0), 8)
    assert cost["batch_size"] == 8 and cost["threads"] >= 1 and cost["s_per_step"] > 0
    assert (1 + 3 * passes - 0.5) * f < cost["gflop_step"] * 1e9 < (1 + 3 * passes + 1) * f
    encoder = build_encoder(dict(name="st_gcn", hidden_channels=4, hidden_dim=8), layout="kinect-v1")
    assert cost["encoder_params"] == sum(p.numel() for p in encoder.parameters())
    assert cost["queue_size"] == 16 and cost["iters"] == 1


def test_step_cost_takes_another_encoder_from_the_command_line():
    overrides = {"encoder.name": "mamp", "encoder.dim_feat": 8, "encoder.depth": 1, "encoder.num_heads": 1,
                 "encoder.num_frames": 32, "batch_size": 8, "amp": "off", "model_args.queue_size": 16}
    cost = step_cost(SMALL.format("skeletonclr"), overrides, iters=1, warmup=0)
    f = forward_flops(dict(name="mamp", dim_feat=8, depth=1, num_heads=1, num_frames=32), 8)
    assert cost["encoder"]["name"] == "mamp" and cost["amp"] == "off"
    assert 3.5 * f < cost["gflop_step"] * 1e9 < 4.3 * f


def test_the_queue_is_sized_from_the_config_s_own_training_file(tmp_path):
    from tools.step_cost import training_clips
    np.save(tmp_path / "x.npy", np.zeros((1019, 1), np.float32))
    np.save(tmp_path / "y.npy", np.zeros((629, 1), np.float32))
    config = {"train_feeder_args": {"data_path": str(tmp_path / "x.npy")}}
    assert training_clips(config, {}) == 1019
    assert training_clips(config, {"train_feeder_args.data_path": str(tmp_path / "y.npy")}) == 629
    assert training_clips({"train_feeder_args": {"data_path": str(tmp_path / "absent.npy")}}, {}) is None
