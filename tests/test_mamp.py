"""MAMP's transformer encoder against the official implementation: names, shapes and outputs.

tests/data/mamp_official_keys.json lists the keys and shapes of the official linear-probe model
(maoyunyao/MAMP `model/transformer.py`, the NTU-60 linprobe config) and of the pretraining model
(`model_mamp/transformer.py`, decoder depth 3). tests/data/official_encoders.npz holds the official
tokens after the final LayerNorm for dim 32, depth 2, 4 heads, 16 frames, every tensor filled by
`seeded_state`, for the clip `x` (N=2, T=16, M=2), as (N, M, T', V, C).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import seeded_state

from net.mamp import MAMPTransformer, official_state_dict

DATA = Path(__file__).parent / "data"
OFFICIAL = np.load(DATA / "official_encoders.npz")
KEYS = json.loads((DATA / "mamp_official_keys.json").read_text())
SMALL = dict(dim_feat=32, depth=2, num_heads=4, num_frames=16)


def test_names_and_shapes_are_the_official_encoder():
    shapes = {k: list(v.shape) for k, v in MAMPTransformer().state_dict().items()}
    linprobe = {k: v for k, v in KEYS["linprobe"].items() if not k.startswith("head.")}
    assert shapes == linprobe


@pytest.mark.parametrize("model", ["linprobe", "pretrain"])
def test_official_checkpoints_load_naming_what_is_dropped(model):
    kept, dropped = official_state_dict({k: torch.zeros(shape) for k, shape in KEYS[model].items()})
    MAMPTransformer().load_state_dict(kept, strict=True)
    heads = {"linprobe": {"head"}, "pretrain": {"decoder_blocks", "decoder_embed", "decoder_norm",
                                                 "decoder_pos_embed", "decoder_pred", "decoder_temp_embed",
                                                 "mask_token"}}
    assert {k.split(".")[0] for k in dropped} == heads[model]
    assert len(kept) + len(dropped) == len(KEYS[model])


def test_feature_map_matches_the_official_tokens():
    model = MAMPTransformer(**SMALL).eval()
    model.load_state_dict(seeded_state({k: v.shape for k, v in model.state_dict().items()}))
    fmap = model(torch.from_numpy(OFFICIAL["x"]))
    expected = torch.from_numpy(OFFICIAL["mamp_small_map"]).permute(0, 1, 4, 2, 3)
    torch.testing.assert_close(fmap, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


@pytest.mark.parametrize("frames", [16, 120])
def test_contract_shape_and_stride(frames):
    model = MAMPTransformer(dim_feat=32, depth=1, num_heads=4).eval()
    assert (model.out_channels, model.temporal_stride) == (32, 4)
    assert model(torch.randn(2, 3, frames, 25, 2)).shape == (2, 2, 32, frames // 4, 25)


def test_shorter_clip_uses_the_first_temporal_embeddings():
    """A clip of T < num_frames frames is the first T / 4 steps of the embedding, as the official slice."""
    short, full = MAMPTransformer(**SMALL).eval(), MAMPTransformer(**dict(SMALL, num_frames=32)).eval()
    state = short.state_dict()
    full.load_state_dict({**state, "temp_embed": torch.cat([state["temp_embed"], torch.randn(1, 4, 1, 32)], 1)})
    x = torch.randn(1, 3, 16, 25, 1)
    torch.testing.assert_close(short(x), full(x))


def test_stochastic_depth_only_in_training():
    x = torch.randn(4, 3, 16, 25, 1)
    plain, dropping = MAMPTransformer(**SMALL), MAMPTransformer(**dict(SMALL, drop_path_rate=0.5))
    torch.testing.assert_close(plain.train()(x), plain.eval()(x))
    assert not torch.allclose(dropping.train()(x), dropping.eval()(x))


@pytest.mark.parametrize("shape", [(1, 3, 18, 25, 1), (1, 3, 20, 25, 1), (1, 3, 16, 20, 1)])
def test_clips_the_embedding_cannot_take_are_refused(shape):
    with pytest.raises(ValueError, match="MAMP encoder takes V=25 joints"):
        MAMPTransformer(**SMALL)(torch.randn(shape))


def test_layout_sets_the_joint_tokens():
    model = MAMPTransformer(dim_feat=32, depth=1, num_heads=4, layout="kinect-v1").eval()
    assert model(torch.randn(1, 3, 32, 20, 1)).shape == (1, 1, 32, 8, 20)
