"""Shared fixtures: a small demo dataset built through the real gendata → preprocess path."""

import pytest

FRAMES = 16


@pytest.fixture(scope="session")
def demo_arrays(tmp_path_factory):
    """Folder with {train,val}_{position,motion}.npy and label files of 120 synthetic clips, 16 frames."""
    from feeder.prepare.demo_arrays import demo_arrays
    return demo_arrays(str(tmp_path_factory.mktemp("demo")), num_files=120, frames=FRAMES, seed=0)


def tiny_run(data, work_dir, **overrides):
    """Config for a tiny, fast run on `data` (a folder made by demo_arrays)."""
    part = {p: dict(data_path=f"{data}/{p}_position.npy", label_path=f"{data}/{p}_label.pkl")
            for p in ("train", "val")}
    cfg = dict(work_dir=str(work_dir), batch_size=16, test_batch_size=32, num_workers=0, progress=False,
               train_feeder_args=dict(part["train"], frames=FRAMES), test_feeder_args=part["val"],
               model_args=dict(hidden_channels=4, hidden_dim=16, dropout=0.0), eval_interval=0)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def tiny():
    """tiny(data, work_dir, **overrides) → (processor class, config) for a named processor."""
    from processor import configure

    def make(name, data, work_dir, **overrides):
        return configure(name, tiny_run(data, work_dir, **overrides))
    return make


class Crafted:
    """An object whose unpickling calls open(marker, 'w'): what a crafted data file runs on load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def crafted(tmp_path):
    """(marker path, Crafted object): after a safe load of a file holding the object, the marker must not exist."""
    marker = tmp_path / "code_ran"
    return marker, Crafted(marker)
