"""python main.py demo: the whole pipeline on the built-in synthetic dataset, in minutes on a laptop CPU.

Generates demo `.skeleton` files, builds the arrays with the same tools as NTU, then runs the table of
config/demo/table.yaml (processor/table.py): the two baselines (raw joints, random encoder with measured
BN statistics), SkeletonCLR and SkeleMixCLR+, each pretrained briefly and linearly evaluated. Prints the
top-1 table with each pretraining's final loss over chance (also in `<work_dir>/demo_result.json`).
"""
import json
import os

from feeder.feeder import labelled_subset, read_labels
from feeder.prepare.demo_arrays import demo_arrays
from processor.table import RUN_HELP, Orchestrator, Table
from torchlight.config import ConfigError, deep_merge, load_yaml
from torchlight.dist import barrier, broadcast_object, is_main_process
from torchlight.io import atomic_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "config", "demo")

DEFAULTS = dict(
    work_dir="./work_dir/demo",
    data_dir="./data/demo",
    num_files=1000,
    frames=32,
    nuisance=0.5,
    timing=0.0,
    label_fraction=0.1,
    seed=1,
    device="auto",
    speed="exact",
    progress=True,
    pretrain={},
    linear={},
)
HELP = dict(  # shown by `python main.py demo --help`
    RUN_HELP,
    work_dir="the table's runs and demo_result.json",
    data_dir="raw files, gendata output and arrays per data setting; reused when present",
    num_files="synthetic .skeleton files to generate",
    frames="frames per clip of the arrays",
    nuisance="feeder/prepare/demo.py: shrunken actions, random limb offsets, random shear",
    timing="feeder/prepare/demo.py: 1 = shorter actions at random times of the clip",
    label_fraction="linear evaluation trains on this share of the training labels (per class); "
                   "pretraining sees every training clip, unlabelled: the setting SSL is for",
    seed="seed of the data and of every run",
    pretrain="overrides for both pretraining runs, e.g. --pretrain.num_steps 100",
)


class Demo(Orchestrator):
    defaults, help = DEFAULTS, HELP

    def prepare_data(self):
        """The synthetic clips as arrays (feeder/prepare/demo_arrays.py), each step skipped when its output exists."""
        cfg = self.cfg
        # Every setting that changes the data names its folder: another setting never reuses these clips.
        root = os.path.join(cfg["data_dir"], f"files{cfg['num_files']}_seed{cfg['seed']}_nuisance{cfg['nuisance']}"
                                             f"_timing{cfg['timing']}_frames{cfg['frames']}")
        self.log(f"synthetic data: {cfg['num_files']} clips in {root}")
        return demo_arrays(root, cfg["num_files"], cfg["frames"], cfg["seed"], cfg["nuisance"], cfg["timing"])

    def fitted_batches(self, data):
        """(pretrain, linear) overrides that lower the configs' batches (64, 16) to what few clips allow: a
        power of two no larger than the training clips, or than the labelled ones (before, a demo of fewer than
        ~250 files stopped with 'batch_size 16 is larger than the 12 training clips'). A batch the command line
        gives stands."""
        cfg = self.cfg
        labels = read_labels(os.path.join(data, "train_label.pkl"))[1]
        labelled = len(labelled_subset(labels, cfg["label_fraction"], 0))  # the feeder's label_seed
        out = []
        for overrides, batch, clips in ((cfg["pretrain"], 64, len(labels)), (cfg["linear"], 16, labelled)):
            if "batch_size" in overrides or clips >= batch:
                out.append(overrides)
                continue
            if clips < 2:
                raise ConfigError(f"num_files {cfg['num_files']} with label_fraction {cfg['label_fraction']} "
                                  f"leaves {clips} training clip(s): raise num_files or label_fraction")
            fitted = 2 ** (clips.bit_length() - 1)
            self.log(f"{clips} clips: batch_size {fitted} instead of {batch}")
            out.append(dict(overrides, batch_size=fitted))
        return out

    def start(self):
        cfg = self.cfg
        data = self.prepare_data() if is_main_process() else None
        data = broadcast_object(data)  # the other ranks wait here for rank 0's arrays
        pretrain, linear = self.fitted_batches(data)
        part = {p: dict(data_path=f"{data}/{p}_position.npy", label_path=f"{data}/{p}_label.pkl")
                for p in ("train", "val")}
        rows = load_yaml(os.path.join(CONFIGS, "table.yaml"))["rows"]
        for row in rows:  # the demo runs from any folder: its configs are found beside this file
            row["linear"] = os.path.join(REPO, row["linear"])
            if row.get("pretrain"):
                row["pretrain"] = [row["pretrain"][0], os.path.join(REPO, row["pretrain"][1])]
        table = dict(Table.default_config(), rows=rows,
                     work_dir=cfg["work_dir"], seeds=[cfg["seed"]], device=cfg["device"], speed=cfg["speed"],
                     progress=cfg["progress"],
                     data=dict(train_feeder_args=dict(part["train"], frames=cfg["frames"]),
                               test_feeder_args=part["val"]),
                     pretrain=pretrain, overwrite=True,  # a rerun redoes its runs
                     linear=deep_merge(dict(train_feeder_args=dict(label_fraction=cfg["label_fraction"])), linear))
        if is_main_process():
            print(f"\nDemo: synthetic data (nuisance {cfg['nuisance']}, timing {cfg['timing']}), NTU-60-style xsub "
                  f"split; linear evaluation on {cfg['label_fraction']:.0%} of the training labels", flush=True)
        rows = Table(table).start()
        if is_main_process():
            path = os.path.join(cfg["work_dir"], "demo_result.json")
            with atomic_path(path) as tmp, open(tmp, "w") as f:
                json.dump(dict(results=rows, config=cfg), f, indent=1)
            self.log(f"written {path}")
        barrier()
        return rows
