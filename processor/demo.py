"""python main.py demo: the whole pipeline on the built-in synthetic dataset, in minutes on a laptop CPU.

Generates demo `.skeleton` files, builds the arrays with the same tools as NTU, pretrains SkeleMixCLR+
and SkeletonCLR briefly (config/demo/*.yaml), linearly evaluates both and a randomly initialised
encoder, and prints the top-1 table (also written to `<work_dir>/demo_result.json`).
"""
import json
import os

from processor import configure
from torchlight.config import load_yaml
from torchlight.io import Logger, atomic_path

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "demo")

DEFAULTS = dict(
    work_dir="./work_dir/demo",
    data_dir="./data/demo",  # raw files, gendata output and arrays; reused when present
    num_files=1000,
    frames=32,
    seed=1,
    device="auto",
    progress=True,
    pretrain={},             # overrides for both pretraining runs, e.g. --pretrain.num_epoch 2
    linear={},               # overrides for the three linear evaluations
)

# (row of the table, processor, experiment config in config/demo/)
MODELS = (("SkeleMixCLR+", "pretrain_skeletonclr_multi_swapv2", "skelemixclr_multi_swap_demo.yaml"),
          ("SkeletonCLR", "pretrain_skeletonclr", "skeletonclr_demo.yaml"),
          ("random init", None, None))


class Demo:
    @classmethod
    def default_config(cls):
        return dict(DEFAULTS)

    def __init__(self, cfg):
        self.cfg = cfg
        self.log = Logger(cfg["work_dir"])

    def prepare_data(self):
        """Demo files → gendata → preprocess, each step skipped when its output exists."""
        from feeder import preprocess_ntu
        from tools import demo_data, ntu_gendata
        cfg, root = self.cfg, self.cfg["data_dir"]
        raw, gen, arrays = (os.path.join(root, d) for d in ("raw", "gendata", f"frame{cfg['frames']}"))
        if not os.path.isdir(raw) or not os.listdir(raw):
            self.log(f"generating {cfg['num_files']} synthetic clips in {raw}")
            demo_data.generate(raw, num_files=cfg["num_files"], seed=cfg["seed"])
        if not os.path.exists(os.path.join(gen, "xsub", "val_label.pkl")):
            ntu_gendata.main(["--data_path", raw, "--out_folder", gen, "--benchmark", "xsub"])
        if not os.path.exists(os.path.join(arrays, "xsub", "val_label.npy")):
            preprocess_ntu.main(["--dataset_path", gen, "--out_folder", arrays, "--frames", str(cfg["frames"])])
        return os.path.join(arrays, "xsub")

    def run(self, name, config_file, work_dir, overrides):
        """Run processor `name` with config/demo/`config_file`, pointed at this demo's data and work_dir."""
        cfg = self.cfg
        data = {p: dict(data_path=f"{self.data}/{p}_position.npy", label_path=f"{self.data}/{p}_label.pkl")
                for p in ("train", "val")}
        # overwrite: a rerun of the demo redoes its own runs in place.
        demo = dict(work_dir=os.path.join(cfg["work_dir"], work_dir), overwrite=True, seed=cfg["seed"],
                    device=cfg["device"], progress=cfg["progress"],
                    train_feeder_args=dict(data["train"], frames=cfg["frames"]), test_feeder_args=data["val"])
        config = {**load_yaml(os.path.join(CONFIGS, config_file)), **demo}
        cls, run_cfg = configure(name, config, overrides, source=config_file)
        processor = cls(run_cfg)
        processor.start()
        return processor

    def start(self):
        cfg = self.cfg
        self.data = self.prepare_data()
        rows = []
        for label, name, config_file in MODELS:
            work = label.lower().replace("+", "_plus").replace(" ", "_")
            weights = None
            if name:
                self.log(f"pretraining {label} (config/demo/{config_file})")
                pre = self.run(name, config_file, work, cfg["pretrain"])
                weights = os.path.join(pre.cfg["work_dir"], f"epoch{pre.cfg['num_epoch']}_model.pt")
            self.log(f"linear evaluation of {label}")
            lin = self.run("linear_evaluation", "linear_eval_demo.yaml", f"{work}/linear",
                           dict(cfg["linear"], weights=weights))
            rows.append(dict(model=label, top1=lin.history[-1]["top1"], top5=lin.history[-1]["top5"]))
        table = "\n".join([f"{'model':<14}{'top-1 %':>9}"] + [f"{r['model']:<14}{r['top1']:>9.1f}" for r in rows])
        print("\nDemo linear evaluation (synthetic data, NTU-60-style xsub split):\n" + table, flush=True)
        path = os.path.join(cfg["work_dir"], "demo_result.json")
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            json.dump(dict(results=rows, config=cfg), f, indent=1)
        self.log(f"written {path}")
        return rows
