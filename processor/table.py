"""python main.py table --config X.yaml: pretrain and linearly evaluate several rows over seeds, one table.

Each row names a linear-evaluation config and, unless it is a baseline, a pretraining processor and its
config; every run goes to `<work_dir>/<row>/seed<N>`. The table gives linear top-1 as mean ± std over
`seeds` and each pretraining's final loss over its chance value (health/loss_over_chance), also written
to `<work_dir>/table.json`. Rows without pretraining are the honest baselines of issue 10: a random
encoder with measured BN statistics, and the raw joints.
"""
import json
import os
import statistics

from processor import configure
from torchlight.config import ConfigError, load_yaml
from torchlight.dist import barrier, init_distributed, is_main_process
from torchlight.io import Logger, atomic_path

DEFAULTS = dict(
    work_dir="./work_dir/table",
    seeds=[1],
    device="auto",
    speed="exact",  # passed to every run: fast is docs/gpu.md's fast setting
    progress=True,
    data={},       # merged into every run: e.g. {train_feeder_args: {...}, test_feeder_args: {...}}
    rows=[],       # [{name, linear: yaml, pretrain: [processor, yaml] (optional), linear_args: {...}}]
    pretrain={},   # overrides for every pretraining run, e.g. --pretrain.num_epoch 2
    linear={},     # overrides for every linear evaluation
    overwrite=False,  # True: redo runs whose work_dir exists (the demo), instead of refusing
)


def slug(name):
    """A row's folder name: 'SkeleMixCLR+' -> 'skelemixclr_plus', 'random init' -> 'random_init'."""
    return name.lower().replace("+", "_plus").replace(" ", "_")


def merged(*dicts):
    """Nested dicts merged left to right (later wins), for run configs assembled from several places."""
    out = {}
    for d in dicts:
        for k, v in (d or {}).items():
            out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def mean_std(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


class Table:
    @classmethod
    def default_config(cls):
        return dict(DEFAULTS)

    def __init__(self, cfg):
        self.cfg = cfg
        for row in cfg["rows"]:
            if not isinstance(row, dict) or "name" not in row or "linear" not in row:
                raise ConfigError(f"table row {row!r} needs a name and a linear config")
        init_distributed(cfg["device"])  # under torchrun every rank runs every row; rank 0 writes
        self.log = Logger(cfg["work_dir"], enabled=is_main_process())

    def run(self, name, config_file, work_dir, seed, *overrides):
        """Processor `name` with `config_file`, this table's data, work_dir and seed, and `overrides`."""
        cfg = self.cfg
        common = dict(work_dir=work_dir, seed=seed, device=cfg["device"], speed=cfg["speed"],
                      progress=cfg["progress"], overwrite=cfg["overwrite"])
        config = merged(load_yaml(config_file), cfg["data"], common, *overrides)
        cls, run_cfg = configure(name, config, {}, source=config_file)
        processor = cls(run_cfg)
        processor.start()
        return processor

    def run_row(self, row, seed):
        """(linear top-1, top-5, pretraining's final loss over chance or None) of one row and seed."""
        work = os.path.join(self.cfg["work_dir"], slug(row["name"]), f"seed{seed}")
        weights, ratio = None, None
        if row.get("pretrain"):
            name, config_file = row["pretrain"]
            self.log(f"{row['name']}, seed {seed}: pretraining ({config_file})")
            pre = self.run(name, config_file, work, seed, self.cfg["pretrain"])
            weights = os.path.join(work, f"epoch{pre.cfg['num_epoch']}_model.pt")
            ratio = pre.stats[-1]["health/loss_over_chance"]
        self.log(f"{row['name']}, seed {seed}: linear evaluation ({row['linear']})")
        lin = self.run("linear_evaluation", row["linear"], os.path.join(work, "linear"), seed,
                       row.get("linear_args"), self.cfg["linear"], dict(weights=weights))
        return dict(top1=lin.history[-1]["top1"], top5=lin.history[-1]["top5"], loss_over_chance=ratio)

    def start(self):
        cfg, rows = self.cfg, []
        for row in cfg["rows"]:
            runs = [self.run_row(row, seed) for seed in cfg["seeds"]]
            top1, std = mean_std([r["top1"] for r in runs])
            ratios = [r["loss_over_chance"] for r in runs if r["loss_over_chance"] is not None]
            rows.append(dict(model=row["name"], top1=top1, top1_std=std, runs=runs,
                             loss_over_chance=statistics.mean(ratios) if ratios else None))
        if is_main_process():
            print("\n" + self.format(rows), flush=True)
            path = os.path.join(cfg["work_dir"], "table.json")
            with atomic_path(path) as tmp, open(tmp, "w") as f:
                json.dump(dict(results=rows, config=cfg), f, indent=1)
            self.log(f"written {path}")
        barrier()
        return rows

    def format(self, rows):
        seeds = self.cfg["seeds"]
        which = f"mean ± std over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds[0]}"
        lines = [f"linear evaluation, {which}", f"{'model':<14}{'top-1 %':>14}{'loss/chance':>13}"]
        for r in rows:
            ratio = "-" if r["loss_over_chance"] is None else f"{r['loss_over_chance']:.3f}"
            top1 = f"{r['top1']:.1f}" + (f" ± {r['top1_std']:.1f}" if len(seeds) > 1 else "")
            lines.append(f"{r['model']:<14}{top1:>14}{ratio:>13}")
        return "\n".join(lines)
