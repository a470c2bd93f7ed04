"""Ship a pretraining run's encoder: the query encoder's weights and the run's config, its sha256, and a
fingerprint of its features that tests/test_weights.py checks.

python tools/export_weights.py <run>/epoch80_model.pt exported/ucla_xview_small_skelemixclr_plus.pt
Writes the file and, beside it, `<name>.fingerprint.json`: the entry weights/fingerprints.json would hold.
It never writes into the repository's weights/ (tracked files): to ship a file, copy it there and add the
entry to weights/fingerprints.json by hand, in the same commit. An existing output is refused unless
--overwrite; bad input is one `error: ...` line.
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
from torchlight.io import atomic_path  # noqa: E402

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
    config = state.get("config") if isinstance(state, dict) else None
    if not (isinstance(config, dict) and config.get("method") and isinstance(state.get("model"), dict)):
        raise ValueError(f"{checkpoint} is not a pretraining checkpoint of this project (no model, config or method)")
    shipped = dict(model={k: v for k, v in state["model"].items() if k.startswith("encoder_q.")},
                   config=config, epoch=state["epoch"])
    features = fingerprint(shipped)  # before writing: a checkpoint whose encoder does not load writes nothing
    write_checkpoint(shipped, out)
    return dict(sha256=sha256(out), features=features, source=os.path.basename(checkpoint),
                epoch=state["epoch"], method=config["method"], seed=config["seed"])


def check_out(out, overwrite):
    """`out` may be written: not in the repository's weights/ folder, and new unless `overwrite`."""
    if os.path.realpath(os.path.dirname(os.path.abspath(out))) == os.path.realpath(os.path.dirname(FINGERPRINTS)):
        raise ValueError(f"out {out} is in the repository's weights/, whose files git tracks: export elsewhere, "
                         "then copy it in and add its entry to weights/fingerprints.json")
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"out {out} exists: choose another name, or --overwrite")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing out file")
    args = parser.parse_args(argv)
    record = os.path.splitext(args.out)[0] + ".fingerprint.json"
    try:
        check_out(args.out, args.overwrite)
        entry = export(args.checkpoint, args.out)
        with atomic_path(record) as tmp, open(tmp, "w") as f:
            json.dump({os.path.basename(args.out): entry}, f, indent=1)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None
    print(f"{args.out}: sha256 {entry['sha256']}; its weights/fingerprints.json entry is in {record}")


if __name__ == "__main__":
    main()
