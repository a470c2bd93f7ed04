"""CTR-GCN encoder against the official implementation: its state-dict names and shapes and its outputs.

tests/data/ctrgcn_official_keys.json lists the official model's keys and shapes (Uason-Chen/CTR-GCN,
`model/ctrgcn.py`, Model(num_class=60, num_point=25, num_person=2, graph ntu_rgb_d)).
tests/data/official_encoders.npz holds the official graph A and the official outputs of that file with
base_channel = 8, every tensor filled by `seeded_state`, for the clip `x` (N=2, T=16, M=2).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import seeded_state

from net.ctrgcn import CTRGCN, official_state_dict

DATA = Path(__file__).parent / "data"
OFFICIAL = np.load(DATA / "official_encoders.npz")


def official_keys():
    return json.loads((DATA / "ctrgcn_official_keys.json").read_text())


def seeded(base_channel):
    model = CTRGCN(base_channel=base_channel)
    model.load_state_dict(seeded_state({k: v.shape for k, v in model.state_dict().items()}))
    return model


def test_names_and_shapes_are_the_official_ones_less_the_classifier():
    shapes = {k: list(v.shape) for k, v in CTRGCN().state_dict().items()}
    expected = official_keys()
    assert sorted(expected) == sorted([*shapes, "fc.bias", "fc.weight"])
    assert all(shapes[k] == expected[k] for k in shapes)


def test_official_state_dict_names_the_classifier():
    state = {k: torch.zeros(shape) for k, shape in official_keys().items()}
    kept, dropped = official_state_dict(state)
    assert dropped == ["fc.bias", "fc.weight"]
    CTRGCN().load_state_dict(kept, strict=True)


def test_a_dataparallel_official_file_loads_through_net_weights_without_its_classifier(tmp_path):
    """net/weights.py strips `module.` and calls the hook although every key is the network's own: the official
    classifier `fc` (here of the classifier's very shape) is dropped, not loaded into the new classifier."""
    from net.encoders import Classifier
    from net.weights import load_encoder
    model = Classifier({"name": "ctrgcn", "base_channel": 8}, num_class=60)
    state = {f"module.{k}": torch.full(v.shape, 0.5) for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "official.pt")
    loaded, dropped, missing = load_encoder(model, str(tmp_path / "official.pt"))
    assert dropped == missing == ["fc.bias", "fc.weight"] and len(loaded) == len(state) - 2
    assert torch.all(model.encoder.l1.gcn1.PA == 0.5) and not torch.all(model.fc.weight == 0.5)


def test_graph_is_the_official_adjacency():
    model = CTRGCN()
    for block in model.blocks():
        assert torch.equal(block.gcn1.PA.detach(), torch.from_numpy(OFFICIAL["ctrgcn_A"]))


@pytest.mark.parametrize("frames, steps", [(16, 4), (64, 16), (30, 8)])
def test_contract_shape_and_stride(frames, steps):
    model = CTRGCN(base_channel=8).eval()
    assert (model.out_channels, model.temporal_stride) == (32, 4)
    assert model(torch.randn(3, 3, frames, 25, 2)).shape == (3, 2, 32, steps, 25)


def test_eval_feature_map_matches_the_official_code():
    fmap = seeded(8).eval()(torch.from_numpy(OFFICIAL["x"]))
    expected = torch.from_numpy(OFFICIAL["ctrgcn_base8_eval_map"])  # official (N·M, C, T', V)
    torch.testing.assert_close(fmap.flatten(0, 1), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


def test_train_mode_pooled_features_match_the_official_code():
    """Batch statistics in every BN: the official pooled features before `fc` in training mode."""
    pooled = seeded(8).train()(torch.from_numpy(OFFICIAL["x"])).mean((1, 3, 4))
    expected = torch.from_numpy(OFFICIAL["ctrgcn_base8_train_pooled"])
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


def test_fixed_graph_is_not_saved_and_gradients_reach_the_refinement():
    fixed = CTRGCN(base_channel=8, adaptive=False)
    assert not any(k.endswith(("PA", ".A")) for k in fixed.state_dict())
    model = seeded(8).train()
    model(torch.randn(2, 3, 16, 25, 2)).square().mean().backward()
    assert model.l5.gcn1.alpha.grad.abs().item() > 0 and model.l5.gcn1.PA.grad.abs().sum() > 0


def test_wrong_bodies_or_joints_are_refused():
    with pytest.raises(ValueError, match="M=2 bodies"):
        CTRGCN(base_channel=8)(torch.randn(1, 3, 16, 25, 1))
    with pytest.raises(ValueError, match="multiple of its 4 temporal branches"):
        CTRGCN(base_channel=10)
    with pytest.raises(ValueError, match="base_channel must be at least 8 .*, got 4"):
        CTRGCN(base_channel=4)


def test_graph_comes_from_the_layout():
    model = CTRGCN(base_channel=8, num_person=1, layout="kinect-v1").eval()
    assert model.l1.gcn1.PA.shape == (3, 20, 20)
    assert model(torch.randn(1, 3, 16, 20, 1)).shape == (1, 1, 32, 4, 20)
