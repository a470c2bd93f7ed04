"""Picture one SkeleMix (docs/method.md §3.2): a clip, its partner and the mixed clip, pasted joints highlighted.

python tools/skelemix_picture.py --data_path data/ntu60_frame64/xsub/train_position.npy \
    --label_path data/ntu60_frame64/xsub/train_label.pkl --index 0 --out skelemix.png
python tools/skelemix_picture.py --demo --out skelemix.png   # a few synthetic clips, no data needed
The skeleton layout defaults to the one recorded in the arrays' manifest.json (feeder/prepare/preprocess.py).
"""
import argparse
import os
import tempfile

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: the repository root on sys.path
    import _bootstrap  # noqa: F401
from feeder.feeder import Feeder  # noqa: E402
from feeder.prepare.demo_arrays import demo_arrays  # noqa: E402
from net.skelemix import SkeleMix  # noqa: E402
from net.utils.layouts import DEFAULT_LAYOUT, get_layout  # noqa: E402
from torchlight.io import read_manifest  # noqa: E402

PLAIN, PASTED = "#4a4a4a", "#d62728"


def highlight(mask, temporal_stride, frames):
    """(frames, V) bool: the (T / stride, V) SkeleMix mask over the frames it covers (docs/method.md §3.2, step 3)."""
    mask = np.asarray(torch.as_tensor(mask).cpu(), dtype=bool)
    out = np.zeros((frames, mask.shape[1]), dtype=bool)
    expanded = np.repeat(mask, temporal_stride, axis=0)[:frames]
    out[:len(expanded)] = expanded
    return out


def demo_clips(folder, num_files):
    """Write `num_files` synthetic clips through gendata and preprocessing; returns (data, label) paths."""
    arrays = demo_arrays(folder, num_files, quiet=True)
    return os.path.join(arrays, "train_position.npy"), os.path.join(arrays, "train_label.pkl")


def recorded_layout(data_path):
    """The layout preprocessing recorded beside the array at `data_path`, else the default layout."""
    return (read_manifest(os.path.dirname(os.path.abspath(data_path))) or {}).get("layout", DEFAULT_LAYOUT)


def mix_batch(feeder, index, batch, spa, tem, mode, layout, stride, seed):
    """Clips index, index+1, ... (mod N) as one batch, mixed once: (batch ids, x, mixed, mask, partner)."""
    if not 0 <= index < len(feeder):
        raise ValueError(f"--index must be in [0, {len(feeder)}), got {index}")
    if len(feeder) < batch:
        raise ValueError(f"--batch {batch} is larger than the dataset ({len(feeder)} clips)")
    ids = [(index + k) % len(feeder) for k in range(batch)]
    x = torch.stack([torch.as_tensor(feeder[i][0]) for i in ids])
    mixer = SkeleMix(layout, stride, mode)
    mixed, mask, partner = mixer(x, *spa, *tem, generator=torch.Generator().manual_seed(seed))
    return ids, x, mixed, mask, partner


def draw(rows, titles, edges, lit, out, frames=6, caption=""):
    """Rows of skeleton frames (x-y projection) to `out`; lit joints, and bones with both ends lit, in red."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit("error: matplotlib is needed for pictures: pip install matplotlib") from None
    t_total = rows[0].shape[1]
    shown = np.linspace(0, t_total - 1, frames).round().astype(int)
    points = np.concatenate([clip[:2].reshape(2, -1) for clip in rows], axis=1)
    points = points[:, np.abs(points).sum(0) > 0] if np.abs(points).sum() else np.array([[-1.0, 1], [-1, 1]])
    (x0, y0), (x1, y1) = points.min(1) - 0.1, points.max(1) + 0.1
    fig = Figure(figsize=(2 * frames, 2.4 * len(rows) * (y1 - y0) / max(x1 - x0, y1 - y0) + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), frames, squeeze=False)
    for r, (clip, title) in enumerate(zip(rows, titles)):
        for c, t in enumerate(shown):
            ax = axes[r, c]
            for m in range(clip.shape[3]):
                x, y = clip[0, t, :, m], clip[1, t, :, m]
                if not (np.abs(x).sum() + np.abs(y).sum()):
                    continue  # absent body
                alpha = 1.0 if m == 0 else 0.45  # a second performer is drawn fainter
                for a, b in edges:
                    colour = PASTED if lit[t, a] and lit[t, b] else PLAIN
                    ax.plot([x[a], x[b]], [y[a], y[b]], color=colour, lw=1.5, alpha=alpha)
                ax.scatter(x, y, s=9, c=[PASTED if on else PLAIN for on in lit[t]], alpha=alpha, zorder=3)
            ax.set(xlim=(x0, x1), ylim=(y0, y1), aspect="equal", xticks=[], yticks=[])
            ax.set_title(f"t={t}" + (", in region" if lit[t].any() else ""), fontsize=9)
        axes[r, 0].set_ylabel(title, fontsize=9)
    fig.suptitle(caption, color=PASTED, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", help="a *_position.npy array (N, 3, T, V, M)")
    parser.add_argument("--label_path", help="its label file (.pkl or .npy)")
    parser.add_argument("--demo", action="store_true", help="use a few synthetic clips instead of data")
    parser.add_argument("--index", type=int, default=0, help="clip shown; the batch is it and the next ones")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--spa", type=int, nargs=2, default=[2, 3], metavar=("L", "U"), help="parts mixed")
    parser.add_argument("--tem", type=int, nargs=2, default=[7, 11], metavar=("L", "U"), help="time steps mixed")
    parser.add_argument("--mode", default="swap", help="swap, zeros or gaussian")
    parser.add_argument("--layout", help="skeleton layout (default: the arrays' manifest.json, else "
                                         f"{DEFAULT_LAYOUT})")
    parser.add_argument("--temporal_stride", type=int, default=4)
    parser.add_argument("--frames", type=int, default=6, help="frames drawn per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="skelemix.png")
    args = parser.parse_args(argv)
    if not args.demo and not (args.data_path and args.label_path):
        parser.error("give --data_path and --label_path, or --demo")
    return args


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            paths = demo_clips(tmp, 3 * args.batch) if args.demo else (args.data_path, args.label_path)
            layout = args.layout or recorded_layout(paths[0])
            feeder = Feeder(*paths, layout=layout)
            ids, x, mixed, mask, partner = mix_batch(feeder, args.index, args.batch, args.spa, args.tem,
                                                     args.mode, layout, args.temporal_stride, args.seed)
        except (OSError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
        other = ids[int(partner[0])]
        lit = highlight(mask, args.temporal_stride, x.shape[2])
        titles = [f"clip {ids[0]} (label {feeder.labels[ids[0]]})", f"partner: clip {other} "
                  f"(label {feeder.labels[other]})", f"mixed ({args.mode})"]
        joints, frames = np.flatnonzero(lit.any(0)) + 1, np.flatnonzero(lit.any(1))
        caption = (f"red: the SkeleMix region, joints {joints.tolist()} (1-based) in frames {frames[0]}-{frames[-1]}"
                   f" ({args.mode}: {'taken from the partner' if args.mode == 'swap' else 'filled'})")
        draw([x[0].numpy(), x[int(partner[0])].numpy(), mixed[0].numpy()], titles,
             get_layout(layout).edges, lit, args.out, args.frames, caption)
    print(f"wrote {args.out} ({layout} layout): {caption}")


if __name__ == "__main__":
    main()
