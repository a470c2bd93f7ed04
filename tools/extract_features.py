"""Write the pooled features the linear protocol sees, (N, C) float32 in clip order, for any encoder and checkpoint.

python tools/extract_features.py --config config/ucla/linear_eval_ucla_xview_small.yaml \
    --weights weights/ucla_xview_small_skelemixclr_plus.pt --data_path data/ucla_frame32/xview/val_position.npy \
    --out val_features.npy

The config is an evaluation config: its encoder, layout and stream (a checkpoint of ours gives the encoder and
layout it was trained with) and its test_feeder_args' clip view (bodies, window_size); the weights are ours,
the original release's or an official encoder's (net/weights.py). The encoder runs in eval mode in float32.
"""
import argparse
import os

if not __package__:
    import _bootstrap  # noqa: F401

import numpy as np  # noqa: E402
import torch  # noqa: E402

from feeder.augment import center_crop  # noqa: E402
from feeder.streams import to_stream  # noqa: E402
from net.utils.layouts import DEFAULT_LAYOUT, get_layout  # noqa: E402
from net.weights import IGNORE_WEIGHTS, load_encoder  # noqa: E402
from processor import configure  # noqa: E402
from processor.evaluation import take_encoder_shape  # noqa: E402
from torchlight.config import ConfigError, load_yaml  # noqa: E402
from torchlight.io import atomic_path, load_npy  # noqa: E402
from torchlight.util import instantiate, select_device  # noqa: E402


def build(config_path, weights):
    """(network in eval mode, evaluation config) of `config_path` with `weights` loaded."""
    _, cfg = configure("linear_evaluation", load_yaml(config_path), {"weights": weights}, source=config_path)
    take_encoder_shape(cfg)
    layout = cfg["layout"] or DEFAULT_LAYOUT
    model = instantiate(cfg["model"], dict(cfg["model_args"], encoder=cfg["encoder"], layout=layout), "model_args")
    load_encoder(model, weights, IGNORE_WEIGHTS)
    return model.eval(), dict(cfg, layout=layout)


def clips(data, feeder_args):
    """Clip i of `data` (N, 3, T, V, M) as evaluation's feeder gives it un-augmented: its first `bodies` bodies,
    the centre `window_size` frames where one is set."""
    bodies, window = feeder_args.get("bodies"), feeder_args.get("window_size")
    for clip in data:
        x = np.array(clip[..., :bodies], dtype=np.float32)
        yield center_crop(x, window) if window else x


@torch.no_grad()
def extract(model, cfg, data_path, batch_size=64, device="cpu"):
    """(N, C) float32 pooled features of every clip of `data_path`, in order."""
    data = load_npy(data_path, mmap=True)
    joints = get_layout(cfg["layout"]).num_joints
    if data.ndim != 5 or data.shape[1] != 3 or data.shape[3] != joints:
        raise ValueError(f"{data_path}: expected shape (N, 3, T, {joints}, M) for layout {cfg['layout']!r}, "
                         f"got {data.shape}")
    model, out, batch = model.to(device), [], []
    for i, x in enumerate(clips(data, cfg["test_feeder_args"]), 1):
        batch.append(torch.from_numpy(x))
        if len(batch) == batch_size or i == len(data):
            x = to_stream(torch.stack(batch).to(device), cfg["stream"], cfg["layout"])
            out.append(model(x, return_features=True).float().cpu())
            batch = []
    if not out:
        raise ValueError(f"{data_path} holds no clips")
    return torch.cat(out).numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="an evaluation config (encoder, layout, stream)")
    parser.add_argument("--weights", required=True, help="checkpoint: ours, the release's or an official encoder's")
    parser.add_argument("--data_path", required=True, help="a *_position.npy array (N, 3, T, V, M)")
    parser.add_argument("--out", required=True, help="the .npy file to write, (N, C) float32")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto")
    args = parser.parse_args(argv)
    try:
        model, cfg = build(args.config, args.weights)
        features = extract(model, cfg, args.data_path, args.batch_size, select_device(args.device))
        with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
            np.save(f, features)
    except (OSError, ValueError, ConfigError) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None
    print(f"wrote {args.out}: {features.shape[0]} clips x {features.shape[1]} features "
          f"({cfg['encoder'].get('name', 'st_gcn')}, {cfg['stream']} stream, {os.path.basename(args.weights)})")


if __name__ == "__main__":
    main()
