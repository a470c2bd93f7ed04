"""The shipped encoders (weights/): each file is the one the README names (sha256), and its features are
those it had when it was exported (tools/export_weights.py)."""
import json
import os

import pytest
import torch

from tools.export_weights import FINGERPRINTS, fingerprint, sha256
from torchlight.checkpoint import read_checkpoint

SHIPPED = json.load(open(FINGERPRINTS)) if os.path.isfile(FINGERPRINTS) else {}


def test_the_ucla_encoders_are_shipped():
    assert {"ucla_xview_small_skeletonclr.pt", "ucla_xview_small_skelemixclr_plus.pt"} <= set(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_encoder_has_its_checksum_and_features(name):
    path = os.path.join(os.path.dirname(FINGERPRINTS), name)
    assert sha256(path) == SHIPPED[name]["sha256"]
    state = read_checkpoint(path, "shipped weights")  # weights only: loading runs no code
    assert state["config"]["method"] == SHIPPED[name]["method"]
    torch.testing.assert_close(torch.tensor(fingerprint(state)), torch.tensor(SHIPPED[name]["features"]),
                               rtol=1e-3, atol=1e-3)
