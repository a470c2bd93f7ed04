"""The shipped encoders (weights/): each file is the one the README names (sha256), and its features are
those it had when it was exported (tools/export_weights.py)."""
import json
import os
import re

import pytest
import torch

from tools.export_weights import FINGERPRINTS, fingerprint, main, sha256
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


@pytest.fixture(scope="module")
def run_checkpoint(demo_arrays, tmp_path_factory):
    from processor import configure
    from tests.conftest import tiny_run
    work = tmp_path_factory.mktemp("run")
    cls, cfg = configure("pretrain_skeletonclr", tiny_run(demo_arrays, work, num_epoch=1, batch_size=16,
                                                          model_args=dict(queue_size=32)))
    cls(cfg).start()
    return str(work / "epoch1_model.pt")


def test_export_never_edits_the_repository(run_checkpoint, tmp_path):
    """Before: every export rewrote the tracked weights/fingerprints.json (and replaced a shipped entry)."""
    before = open(FINGERPRINTS, "rb").read()
    main([run_checkpoint, str(tmp_path / "mine.pt")])
    assert open(FINGERPRINTS, "rb").read() == before
    entry = json.load(open(tmp_path / "mine.fingerprint.json"))["mine.pt"]
    assert entry["sha256"] == sha256(str(tmp_path / "mine.pt")) and entry["method"] == "skeletonclr"
    torch.testing.assert_close(torch.tensor(fingerprint(read_checkpoint(str(tmp_path / "mine.pt"), "w"))),
                               torch.tensor(entry["features"]))


@pytest.mark.parametrize("case, message", [
    ("shipped", "is in the repository's weights/, whose files git tracks"),
    ("exists", "exists: choose another name, or --overwrite"),
    ("garbage", "not a|damaged|cannot"),
    ("missing", "no such file|not found"),
])
def test_export_errors_are_one_line(run_checkpoint, tmp_path, case, message):
    out = str(tmp_path / "out.pt")
    source = run_checkpoint
    if case == "shipped":
        out = os.path.join(os.path.dirname(FINGERPRINTS), "ucla_xview_small_skeletonclr.pt")
    elif case == "exists":
        open(out, "w").close()
    elif case == "garbage":
        source = str(tmp_path / "garbage.pt")
        open(source, "wb").write(b"not a checkpoint")
    elif case == "missing":
        source = str(tmp_path / "nope.pt")
    with pytest.raises(SystemExit) as err:
        main([source, out])
    assert str(err.value).startswith("error: ") and "\n" not in str(err.value)
    assert re.search(message, str(err.value))
