"""Picture encoder features: a 2-D t-SNE (scikit-learn) or PCA of pooled ST-GCN features, coloured by class.

python tools/feature_picture.py --weights work_dir/ntu60_xsub/skelemixclr_multi_swap/epoch300_model.pt \
    --data_path data/ntu60_frame64/xsub/val_position.npy --label_path data/ntu60_frame64/xsub/val_label.pkl \
    --out features.png
Without --weights the encoder is randomly initialised (the baseline picture to compare with). The encoder's
size (--model_args) and --stream default to those recorded in the checkpoint's config (ours carry it).
"""
import argparse
import os

import numpy as np
import torch
import yaml

if __package__ in (None, ""):  # run as a script: the repository root on sys.path
    import _bootstrap  # noqa: F401
from feeder.feeder import Feeder  # noqa: E402
from feeder.streams import STREAMS, to_stream  # noqa: E402
from net.encoders import Classifier  # noqa: E402
from net.utils.layouts import DEFAULT_LAYOUT  # noqa: E402
from net.weights import IGNORE_WEIGHTS, load_encoder  # noqa: E402
from processor.flat_config import nest  # noqa: E402
from torchlight.checkpoint import read_checkpoint, saved_config  # noqa: E402
from torchlight.util import select_device  # noqa: E402

# Everything but the encoder: projection head, key encoder, queue, and any classifier (`fc` is unused).
IGNORE = (*IGNORE_WEIGHTS, "fc.")


def recorded_config(weights):
    """The config a checkpoint of ours carries; {} without weights or for a checkpoint without one."""
    state = read_checkpoint(weights, "weights file") if weights else {}
    return saved_config(state)


def encoder_and_layout(args, recorded):
    """(encoder, layout): --encoder, else --model_args (the release's flat form), else the checkpoint's config's."""
    given = {"encoder": args.encoder} if args.encoder is not None else \
        {"model_args": args.model_args} if args.model_args is not None else None
    if given is not None:
        (key, text), = given.items()
        given = {key: yaml.safe_load(text) or {}}
        if not isinstance(given[key], dict):
            raise ValueError(f"--{key} must be a YAML mapping, got {text!r}")
    config, saved = nest(given if given is not None else recorded), nest(recorded)
    return config.get("encoder") or {}, config.get("layout") or saved.get("layout") or DEFAULT_LAYOUT


def has_sklearn():
    """Whether scikit-learn (for t-SNE) is installed."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def pca_2d(features):
    """Projection of the centred features on their two leading principal axes (numpy SVD), (N, 2)."""
    x = features - features.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    out = np.zeros((len(x), 2))
    out[:, :min(2, len(vt))] = x @ vt[:2].T
    return out


def resolve_method(method):
    """'auto' is t-SNE when scikit-learn is installed, else PCA; an unusable choice is a one-line error."""
    if method not in ("auto", "tsne", "pca"):
        raise ValueError(f"unknown method {method!r}; use auto, tsne or pca")
    if method == "auto":
        return "tsne" if has_sklearn() else "pca"
    if method == "tsne" and not has_sklearn():
        raise ValueError("t-SNE needs scikit-learn: pip install scikit-learn (or use --method pca)")
    return method


def embed_2d(features, method="auto"):
    """(N, D) features -> (N, 2) points by t-SNE (scikit-learn) or PCA (numpy); see `resolve_method`."""
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if resolve_method(method) == "tsne" and len(features) > 3:
        from sklearn.manifold import TSNE
        perplexity = min(30.0, (len(features) - 1) / 3)  # t-SNE needs perplexity < N
        return TSNE(2, perplexity=perplexity, init="pca", random_state=0).fit_transform(features)
    return pca_2d(features)


@torch.no_grad()
def encode(model, dataset, stream, layout, device, batch_size=64):
    """Pooled (N, hidden_dim) features and labels of every clip of `dataset`, in eval mode, without grad."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    features, labels = [], []
    for x, y, _ in loader:
        x = to_stream(x.float().to(device), stream, layout)
        features.append(model(x, return_features=True).float().cpu())
        labels.append(y)
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def plot(points, labels, title, out):
    """Scatter of (N, 2) points coloured by label, saved as PNG to `out`."""
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit("error: matplotlib is needed for pictures: pip install matplotlib") from None
    classes = np.unique(labels)
    fig = Figure(figsize=(7.5, 6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if len(classes) <= 20:  # tab20 comes in dark/light pairs: the ten dark colours first
        tab = colormaps["tab10"].colors if len(classes) <= 10 else colormaps["tab20"].colors
        colours = (tab if len(classes) <= 10 else tab[::2] + tab[1::2])[:len(classes)]
    else:
        colours = colormaps["turbo"](np.linspace(0, 1, len(classes)))
    for k, c in enumerate(classes):
        pick = labels == c
        ax.scatter(points[pick, 0], points[pick, 1], s=8, color=colours[k], label=str(c))
    if len(classes) <= 20:
        ax.legend(title="class", fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="checkpoint (ours or the original release's); random encoder if omitted")
    parser.add_argument("--data_path", required=True, help="a *_position.npy array (N, 3, T, V, M)")
    parser.add_argument("--label_path", required=True, help="its label file (.pkl or .npy)")
    parser.add_argument("--encoder", help="the encoder as YAML, e.g. '{name: st_gcn, hidden_dim: 256}' "
                                          "(default: the checkpoint's, else the default encoder)")
    parser.add_argument("--model_args", help="the release's flat form of --encoder, e.g. '{hidden_dim: 256}'")
    parser.add_argument("--stream", choices=STREAMS, help="default: the checkpoint's, else joint")
    parser.add_argument("--max_clips", type=int, default=2000, help="a random subset of this many clips")
    parser.add_argument("--method", choices=("auto", "tsne", "pca"), default="auto")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    parser.add_argument("--seed", type=int, default=0, help="random encoder and clip subset")
    parser.add_argument("--out", default="features.png")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        recorded = recorded_config(args.weights)
        encoder, layout = encoder_and_layout(args, recorded)
        stream = args.stream or recorded.get("stream", "joint")
        if args.max_clips < 1:
            raise ValueError(f"--max_clips must be >= 1, got {args.max_clips}")
        method = resolve_method(args.method)
        dataset = Feeder(args.data_path, args.label_path, layout=layout)
        torch.manual_seed(args.seed)
        model = Classifier(encoder, layout=layout)
        if args.weights:
            load_encoder(model, args.weights, IGNORE)
        device = select_device(args.device)
        rng = np.random.default_rng(args.seed)
        keep = np.sort(rng.permutation(len(dataset))[:args.max_clips])
        subset = torch.utils.data.Subset(dataset, keep.tolist())
        features, labels = encode(model.to(device), subset, stream, layout, device, args.batch_size)
        points = embed_2d(features, method)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None
    source = os.path.basename(args.weights) if args.weights else "random encoder"
    name = {"tsne": "t-SNE", "pca": "PCA"}[method]
    plot(points, labels, f"{name} of {len(points)} clips, {stream} stream, {source}", args.out)
    print(f"wrote {args.out}: {method} of {len(points)} clips, {len(np.unique(labels))} classes, {stream} stream, "
          f"encoder {encoder}")


if __name__ == "__main__":
    main()
