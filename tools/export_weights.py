"""Ship a pretraining run's encoder: the query encoder's weights and the run's config, its sha256, and a
fingerprint of its features that tests/test_weights.py checks.

python tools/export_weights.py <run>/epoch80_model.pt weights/ucla_xview_small_skelemixclr_plus.pt
"""
import argparse
import hashlib
import json
import os

if not __package__:
    import _bootstrap  # noqa: F401

import torch  # noqa: E402

from net.methods import pretraining_model  # noqa: E402
from net.utils.layouts import DEFAULT_LAYOUT, get_layout  # noqa: E402
from processor.flat_config import nest  # noqa: E402
from torchlight.checkpoint import read_checkpoint, write_checkpoint  # noqa: E402

FINGERPRINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights",
                            "fingerprints.json")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@torch.no_grad()
def fingerprint(state):
    """The first 8 pooled features of a fixed random clip through the shipped encoder, in eval mode: a change
    of the weights, of the encoder or of how they load shows here."""
    config = nest(state["config"])
    layout = config.get("layout") or DEFAULT_LAYOUT
    encoder = pretraining_model(config.get("encoder"), layout, **config["model_args"]).encoder_q.eval()
    encoder.load_state_dict({k.removeprefix("encoder_q."): v for k, v in state["model"].items()})
    joints = get_layout(layout).num_joints
    x = torch.randn(2, 3, 32, joints, 1, generator=torch.Generator().manual_seed(0))
    return encoder(x, return_features=True)[:, :8].flatten().tolist()


def export(checkpoint, out):
    """Write `out` ({model: encoder_q.*, config}) from a pretraining checkpoint; returns its fingerprint entry."""
    state = read_checkpoint(checkpoint, "pretraining checkpoint")
    shipped = dict(model={k: v for k, v in state["model"].items() if k.startswith("encoder_q.")},
                   config=state["config"], epoch=state["epoch"])
    write_checkpoint(shipped, out)
    return dict(sha256=sha256(out), features=fingerprint(shipped), source=os.path.basename(checkpoint),
                epoch=state["epoch"], method=state["config"]["method"], seed=state["config"]["seed"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    entry = export(args.checkpoint, args.out)
    prints = json.load(open(FINGERPRINTS)) if os.path.isfile(FINGERPRINTS) else {}
    prints[os.path.basename(args.out)] = entry
    with open(FINGERPRINTS, "w") as f:
        json.dump(prints, f, indent=1)
    print(f"{args.out}: sha256 {entry['sha256']}")


if __name__ == "__main__":
    main()
