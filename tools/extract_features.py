"""Features out: the pooled encoder features of every clip of an array, for your own classifier or search.

python tools/extract_features.py --weights work_dir/mine/skelemixclr_plus/epoch80_model.pt \
    --data_path data/mine/xsub/val_position.npy --label_path data/mine/xsub/val_label.pkl --out features.npz
Writes `features` float32 (N, hidden_dim), `labels` (N,) and `names` (N,) in the array's order. The encoder's
size, layout, stream and bodies come from the config the checkpoint carries (ours do).
"""
import argparse

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: the repository root on sys.path
    import _bootstrap  # noqa: F401
from feeder.feeder import Feeder  # noqa: E402
from net.st_gcn import Model  # noqa: E402
from net.utils.layouts import model_layout  # noqa: E402
from processor.evaluation import load_encoder  # noqa: E402
from tools.feature_picture import IGNORE, encode, encoder_args, recorded_config  # noqa: E402
from torchlight.io import atomic_path  # noqa: E402
from torchlight.util import select_device  # noqa: E402


def extract(weights, data_path, label_path, device="auto", batch_size=64):
    """(features (N, D), labels (N,), names) of every clip of `data_path` under the encoder of `weights`."""
    recorded = recorded_config(weights)
    if not recorded:
        raise ValueError(f"weights {weights} carry no config: give a checkpoint written by this code")
    model_args = encoder_args(recorded.get("model_args") or {})
    layout = model_layout(model_args)
    train = recorded.get("train_feeder_args")
    bodies = train.get("bodies") if isinstance(train, dict) else None
    dataset = Feeder(data_path, label_path, layout=layout, bodies=bodies)
    model = Model(**model_args)
    load_encoder(model, weights, IGNORE)
    device = select_device(device)
    features, labels = encode(model.to(device), dataset, recorded.get("stream", "joint"), layout, device, batch_size)
    return features, labels, dataset.names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a checkpoint of ours (pretraining or evaluation)")
    parser.add_argument("--data_path", required=True, help="a *_position.npy array (N, 3, T, V, M)")
    parser.add_argument("--label_path", required=True, help="its label file (.pkl or .npy)")
    parser.add_argument("--out", default="features.npz")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    args = parser.parse_args(argv)
    try:
        features, labels, names = extract(args.weights, args.data_path, args.label_path, args.device,
                                          args.batch_size)
        with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=features.astype(np.float32), labels=labels, names=np.array(names))
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None
    print(f"wrote {args.out}: {features.shape[0]} clips x {features.shape[1]} features")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
