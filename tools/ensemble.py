"""Fuse per-clip scores of several streams (joint, motion, bone) and report top-1/top-5 (docs/method.md §4).

python tools/ensemble.py joint/scores.pkl motion/scores.pkl bone/scores.pkl --label val_label.pkl
"""
import argparse
import sys

if not __package__:
    import _bootstrap  # noqa: F401

import numpy as np  # noqa: E402

from torchlight.io import safe_pickle_load  # noqa: E402


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def unpickle(path, what):
    """The data pickled in `path` (torchlight.io.safe_pickle_load: it runs no code); any other file names it."""
    return safe_pickle_load(path, what)


def load_scores(path):
    """{clip name: 1-D finite scores} of a scores.pkl, all of one length; anything else names the file."""
    scores = unpickle(path, "scores pickle of linear/fine-tune evaluation")
    if not isinstance(scores, dict) or not scores:
        raise ValueError(f"{path}: expected a pickled {{clip name: scores}} dict, got {type(scores).__name__}")
    try:
        arrays = {name: np.asarray(v, dtype=np.float64) for name, v in scores.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{path}: scores that are not numbers") from None
    shapes = sorted({a.shape for a in arrays.values()})
    if len(shapes) != 1 or len(shapes[0]) != 1:
        raise ValueError(f"{path}: expected one score vector per clip, got shapes {shapes[:3]}")
    bad = [name for name, a in arrays.items() if not np.isfinite(a).all()]
    if bad:
        raise ValueError(f"{path}: the scores of {len(bad)} clips hold NaN or inf, e.g. {bad[0]}")
    return arrays


def fuse(score_dicts, weights=None, use_softmax=True):
    """Weighted sum of each clip's (softmax) scores over streams: {name: fused scores}."""
    weights = weights or [1.0] * len(score_dicts)
    names = list(score_dicts[0])
    for i, scores in enumerate(score_dicts[1:], 1):
        if set(scores) != set(names):
            raise ValueError(f"score file {i + 1} covers other clips than score file 1")
    stacked = np.stack([np.stack([np.asarray(s[n], dtype=np.float64) for n in names]) for s in score_dicts])
    if use_softmax:
        stacked = softmax(stacked)
    fused = np.tensordot(np.asarray(weights, dtype=np.float64), stacked, axes=1)
    return dict(zip(names, fused))


def topk(fused, labels, k):
    """Fraction of clips whose label is among the k highest fused scores."""
    scores = np.stack([fused[n] for n in labels])
    truth = np.array(list(labels.values()))
    return float((np.argsort(-scores, axis=1)[:, :k] == truth[:, None]).any(1).mean())


def load_labels(path):
    """{clip name: label} from a `<part>_label.pkl` of gendata (names with or without '.skeleton')."""
    content = unpickle(path, "gendata label pickle")
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise ValueError(f"{path}: expected a pickled (names, labels) pair")
    names, labels = content
    return dict(zip(names, (int(x) for x in labels)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", nargs="+", help="scores.pkl files written by linear/fine-tune evaluation")
    parser.add_argument("--label", required=True, help="the val <part>_label.pkl of the benchmark")
    parser.add_argument("--weights", type=float, nargs="+", help="one weight per score file (default 1)")
    parser.add_argument("--logits", action="store_true", help="sum raw scores instead of softmax")
    args = parser.parse_args(argv)
    try:
        if args.weights and len(args.weights) != len(args.scores):
            raise ValueError(f"{len(args.weights)} weights for {len(args.scores)} score files")
        if args.weights and not np.isfinite(args.weights).all():
            raise ValueError(f"--weights {' '.join(map(str, args.weights))}: every weight must be a finite number")
        dicts = [load_scores(path) for path in args.scores]
        classes = [len(next(iter(d.values()))) for d in dicts]
        if len(set(classes)) > 1:
            raise ValueError("score files have different numbers of classes: "
                             + ", ".join(f"{path} {n}" for path, n in zip(args.scores, classes)))
        fused = fuse(dicts, args.weights, use_softmax=not args.logits)
        labels = load_labels(args.label)
        missing = set(labels) - set(fused)
        if missing:
            raise ValueError(f"{len(missing)} clips of {args.label} have no scores, e.g. {sorted(missing)[0]}")
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    top1, top5 = topk(fused, labels, 1), topk(fused, labels, 5)
    print(f"fused {len(args.scores)} streams over {len(labels)} clips: top-1 {100 * top1:.2f}%  "
          f"top-5 {100 * top5:.2f}%")
    return top1, top5


if __name__ == "__main__":
    main()
