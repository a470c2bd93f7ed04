"""torchlight/checkpoint.py: a content checksum catches damaged bytes; unreadable files are one-line errors."""
import numpy as np
import pytest
import torch

from torchlight.checkpoint import read_checkpoint, write_checkpoint
from torchlight.config import ConfigError


def state():
    return dict(model={"w": torch.full((512,), 1.5), "n": torch.tensor(3)}, epoch=2,
                rng=dict(numpy=np.arange(4, dtype=np.uint32)))


def test_round_trip_and_flipped_tensor_bytes(tmp_path):
    path = tmp_path / "epoch2_model.pt"
    write_checkpoint(state(), path)
    back = read_checkpoint(str(path), "resume checkpoint")
    assert torch.equal(back["model"]["w"], state()["model"]["w"]) and "checksum" not in back
    raw = path.read_bytes()
    pattern = np.float32(1.5).tobytes() * 8
    at = raw.index(pattern) + 400
    path.write_bytes(raw[:at] + np.float32(6.5).tobytes() + raw[at + 4:])
    assert torch.load(path, weights_only=False)["model"]["w"].sum() == 1.5 * 511 + 6.5  # torch reads it silently
    with pytest.raises(ConfigError, match=f"resume checkpoint {path} is damaged: its content does not match"):
        read_checkpoint(str(path), "resume checkpoint")


def test_files_without_checksum_still_load(tmp_path):
    torch.save({"encoder_q.fc.weight": torch.ones(2)}, tmp_path / "release.pt")  # the original release's kind
    assert read_checkpoint(str(tmp_path / "release.pt"), "weights file")["encoder_q.fc.weight"].sum() == 2


@pytest.mark.parametrize("damage", [lambda raw: b"", lambda raw: raw[:len(raw) // 2], lambda raw: b"{\"a\": 1}",
                                    lambda raw: bytes(len(raw))])
def test_unreadable_files_are_one_line_errors(tmp_path, damage):
    path = tmp_path / "x.pt"
    write_checkpoint(state(), path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ConfigError, match=f"weights file {path} is not a readable checkpoint") as info:
        read_checkpoint(str(path), "weights file")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="weights file not found: nope.pt"):
        read_checkpoint("nope.pt", "weights file")


def test_a_real_checkpoint_loads_weights_only_with_numpy_rng_state_and_config(tmp_path):
    path = tmp_path / "epoch1_model.pt"
    write_checkpoint(dict(state(), rng=dict(numpy=np.random.get_state()), config=dict(model_args=dict(a=1)),
                          scaler={}), path)
    back = read_checkpoint(str(path), "resume checkpoint")
    assert back["rng"]["numpy"][1].dtype == np.uint32 and back["config"] == dict(model_args=dict(a=1))


def test_a_crafted_checkpoint_runs_nothing_and_names_the_file(tmp_path, crafted):
    marker, payload = crafted
    path = tmp_path / "evil.pt"
    torch.save({"model": payload}, path)
    with pytest.raises(ConfigError, match=f"weights file {path} refers to io.open, which no checkpoint "
                                          "holds: not loaded, nothing of it run") as info:
        read_checkpoint(str(path), "weights file")
    assert "\n" not in str(info.value) and not marker.exists()
