"""The one dataset over preprocessed arrays: evaluation clips, augmented views, labelled subsets."""
import os

import numpy as np
import torch

from net.utils.layouts import DEFAULT_LAYOUT, get_layout
from torchlight.io import first_non_finite, load_npy, read_manifest, safe_pickle_load

from .augment import augment_sample, center_crop, temporal_resize


def read_labels(path):
    """(names or None, int64 labels (N,)) from a `.pkl` (names, labels) or `.npy` (N, 1), docs/method.md §1.2/§1.3."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label file {path} not found")
    if path.endswith(".npy"):
        names, labels = None, load_npy(path, mmap=False, what="label file")
        if labels.ndim not in (1, 2) or labels.ndim == 2 and labels.shape[1] != 1:
            raise ValueError(f"{path}: expected labels of shape (N, 1), got {labels.shape}")
    else:
        content = safe_pickle_load(path, "label pickle")
        if not (isinstance(content, (tuple, list)) and len(content) == 2):
            raise ValueError(f"{path}: expected a pickled (names, labels) pair")
        names, labels = list(content[0]), np.asarray(content[1])
        if len(names) != len(labels):
            raise ValueError(f"{path}: {len(names)} names but {len(labels)} labels")
    return names, class_indices(labels.reshape(-1), path)


def class_indices(labels, path):
    """`labels` as int64, each a whole number >= 0; anything else (1.5, -1, 'a') is an error naming it."""
    try:
        values = labels.astype(np.float64)
    except (TypeError, ValueError):
        values = np.full(len(labels), np.nan)
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0) & (values == np.floor(values))))
    if len(bad):
        raise ValueError(f"{path}: label {labels[bad[0]]} of clip {bad[0]} is not a class index (an integer >= 0)")
    return values.astype(np.int64)


def check_manifest(data_path, layout, data):
    """`data` (the array at `data_path`) agrees with the manifest.json beside it, if any: the layout, the frames
    and its part's clip count (feeder/prepare/preprocess.py). A part of another run, as an overwrite killed
    midway could once leave, is refused instead of being read beside the others."""
    manifest = read_manifest(os.path.dirname(os.path.abspath(data_path))) or {}
    part = os.path.basename(data_path).removesuffix(".npy").removesuffix("_position").removesuffix("_motion")
    clips = (manifest.get("parts") or {}).get(part)
    problems = [f"{what} {said} there, {found} here" for what, said, found in (
        ("layout", manifest.get("layout"), layout), ("frames", manifest.get("frames"), data.shape[2]),
        (f"{part} clips", clips, len(data))) if said is not None and said != found]
    if problems:
        raise ValueError(f"{data_path} disagrees with the manifest.json beside it ({'; '.join(problems)}): "
                         "written by another run or for another layout; preprocess the data again")


def clip_names(label_path, labels):
    """Names of the clips of `.npy` labels: from the generator's pickle beside them when it holds these same
    labels (a stale one names other clips), else their numbers."""
    pkl = os.path.splitext(label_path)[0] + ".pkl"
    names, pickled = read_labels(pkl) if os.path.isfile(pkl) else (None, None)
    return names if pickled is not None and np.array_equal(pickled, labels) else [str(i) for i in range(len(labels))]


def labelled_subset(labels, fraction, seed):
    """Sorted indices of round(fraction · n_c) clips of every class c, drawn with `seed` (docs/method.md §4, semi).

    Python's round (half to even), exactly as docs/method.md writes it: a small enough class gets no clip.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen.append(rng.choice(members, round(fraction * len(members)), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


class Feeder(torch.utils.data.Dataset):
    """Clips of `data_path` (N, 3, T, V, M) with labels (docs/method.md §1.5, §4).

    views=0 gives (clip, label, index) for evaluation, center-cropped to `window_size`;
    views=k gives ([k views], label, index), each view augmented by `augment_sample`, or, with
    augment=False, k copies of the clip resized to `frames` (the processor asks for one and makes the views of it
    on the device). `index` is the position in this dataset (in the labelled subset when `label_fraction` is
    set). `check_finite` reads the whole array once on load and refuses NaN or inf, naming the clip.

    Args:
        data_path: the *_position.npy array (N, 3, T, V, M)
        label_path: its labels (.pkl of (names, labels), or .npy)
        views: augmented views per clip (set by the processor); 0: evaluation clips
        frames: frames per training view after the random crop and resize
        window_size: evaluation: centre crop of this many frames; none: the whole clip
        shear_amplitude: shear augmentation strength; 0: no shear
        padding_ratio: the crop's length is drawn from the clip padded by T / padding_ratio
        mmap: memory-map the array instead of reading it
        label_fraction: keep this share of the clips of each class (semi-supervised); none: all
        label_seed: seed of the labelled subset
        layout: skeleton layout of the array; default: the model's
        augment: augment in the loader workers (set by the processor)
        seed: augmentation seed (set by the processor)
        check_finite: read the whole array on load and refuse NaN or inf
        bodies: keep the first this many bodies (M) of every clip; none: all. The small-data recipe keeps
            one: a one-person clip's second body is zeros that share the encoder's BatchNorms with real
            bodies (docs/experiments.md), and one body halves the encoder's work
    """

    def __init__(self, data_path, label_path, views=0, frames=64, window_size=None, shear_amplitude=0.5,
                 padding_ratio=6, mmap=True, label_fraction=None, label_seed=0, layout=DEFAULT_LAYOUT,
                 augment=True, seed=0, check_finite=False, bodies=None):
        for key, value, low in (("views", views, 0), ("frames", frames, 1),
                                ("padding_ratio", padding_ratio, 1), ("bodies", 1 if bodies is None else bodies, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"feeder {key} must be an integer >= {low}, got {value!r}")
        if window_size is not None and (not isinstance(window_size, int) or window_size < 1):
            raise ValueError(f"feeder window_size must be a positive integer or None, got {window_size!r}")
        if shear_amplitude < 0:
            raise ValueError(f"feeder shear_amplitude must be >= 0, got {shear_amplitude!r}")
        if label_fraction is not None and not 0 < label_fraction <= 1:
            raise ValueError(f"feeder label_fraction must be in (0, 1], got {label_fraction!r}")
        self.views, self.frames, self.window_size, self.augment = views, frames, window_size, augment
        self.shear_amplitude, self.padding_ratio = shear_amplitude, padding_ratio
        self.seed, self.bodies, self.dims = seed, bodies, get_layout(layout).dims
        # In shared memory: persistent loader workers see set_epoch without being re-forked every epoch.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

        self.data_path, self.label_path = data_path, label_path
        self.data = load_npy(data_path, mmap)
        num_joints = get_layout(layout).num_joints
        if self.data.ndim != 5 or self.data.shape[1] != 3 or self.data.shape[3] != num_joints:
            raise ValueError(f"{data_path}: expected shape (N, 3, T, {num_joints}, M) for layout {layout!r}, "
                             f"got {self.data.shape}")
        check_manifest(data_path, get_layout(layout).name, self.data)
        names, self.labels = read_labels(label_path)
        if len(self.labels) != len(self.data):
            raise ValueError(f"{label_path} has {len(self.labels)} labels but {data_path} "
                             f"has {len(self.data)} clips")
        self.names = names if names is not None else clip_names(label_path, self.labels)
        self.indices = (np.arange(len(self.data)) if label_fraction is None
                        else labelled_subset(self.labels, label_fraction, label_seed))
        bad = first_non_finite(self.data) if check_finite else None
        if bad is not None:
            raise ValueError(f"{data_path}: clip {bad} ({self.names[bad]}) holds NaN or inf")

    def check_labels(self, num_class):
        """Every label is below `num_class` (the classifier's outputs), else an error naming the file."""
        bad = np.flatnonzero(self.labels >= num_class)
        if len(bad):
            raise ValueError(f"{self.label_path}: label {self.labels[bad[0]]} of clip {bad[0]} "
                             f"({self.names[bad[0]]}) is out of range for model_args.num_class {num_class}")

    @property
    def augment_args(self):
        """The augmentation's settings (docs/method.md §1.5): `augment_sample` here, `augment_batch` on the device."""
        return dict(shear_amplitude=self.shear_amplitude, padding_ratio=self.padding_ratio, dims=self.dims)

    def __len__(self):
        return len(self.indices)

    @property
    def epoch(self):
        return int(self._epoch)

    def set_epoch(self, epoch):
        """Use a new set of augmentations in `epoch` (docs/method.md §4b: workers must not repeat them)."""
        self._epoch.fill_(epoch)

    def subset_names(self):
        """Names of the clips in this dataset (the labelled subset when `label_fraction` is set)."""
        return [self.names[i] for i in self.indices]

    def __getitem__(self, index):
        clip = self.indices[index]
        x = np.array(self.data[clip][..., :self.bodies], dtype=np.float32)
        label = int(self.labels[clip])
        if self.views == 0:
            return (center_crop(x, self.window_size) if self.window_size else x), label, index
        if not self.augment:
            return [temporal_resize(x, self.frames)] * self.views, label, index
        # Seeded by (seed, epoch, index): reproducible, and independent of worker count and order.
        rng = np.random.default_rng([self.seed, self.epoch, index])
        views = [augment_sample(x, rng, self.frames, **self.augment_args) for _ in range(self.views)]
        return views, label, index
