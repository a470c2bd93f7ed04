"""python main.py table --config X.yaml: pretrain and linearly evaluate several rows over seeds, one table.

Each row names a linear-evaluation config and, unless it is a baseline, a pretraining processor and its
config; every run goes to `<work_dir>/<row>/seed<N>`. The table gives linear top-1 as mean ± std over
`seeds` and each pretraining's final loss over its chance value (health/loss_over_chance), also written
to `<work_dir>/table.json`. Rows without pretraining are the honest baselines: a random
encoder with measured BN statistics, and the raw joints.
"""
import json
import os
import statistics

from net.methods import method_name
from processor import configure
from processor.flat_config import nest
from processor.linear import PROBE
from processor.state import later_checkpoints
from processor.stats import mean_std, paired_interval, verdict
from processor.validate import validate
from torchlight.checkpoint import read_checkpoint, saved_config
from torchlight.config import ConfigError, deep_merge, load_yaml
from torchlight.dist import barrier, broadcast_object, init_distributed, is_main_process
from torchlight.io import Logger, atomic_path
from torchlight.util import git_commit

DEFAULTS = dict(
    work_dir="./work_dir/table",
    seeds=[1],
    device="auto",
    speed="exact",
    progress=True,
    data={},
    rows=[],
    pretrain={},
    linear={},
    overwrite=False,
    compare=[],
)
# Keys the table and the demo pass on to every run they start.
RUN_HELP = dict(speed="passed to every run: exact, or fast (docs/gpu.md)",
                device="device of every run (auto, cpu, cuda, ...)", progress="tqdm progress bars",
                linear="overrides for every linear evaluation")
HELP = dict(  # shown by `python main.py table --help`
    RUN_HELP,
    work_dir="every run goes to <work_dir>/<row>/seed<N>; the table to <work_dir>/table.json",
    seeds="each row runs once per seed: top-1 as mean ± std",
    data="merged into every run: a data file (config/data/X.yaml) or {train_feeder_args: {...}, ...}",
    rows="[{name, linear: yaml, pretrain: [processor, yaml] (optional), pretrain_args: {...}, linear_args: {...}}]",
    pretrain="overrides for every pretraining run, e.g. --pretrain.num_steps 100",
    overwrite="true: redo runs whose work_dir exists (the demo), instead of refusing",
    compare="[[row, other row], ...]: the paired 95 % interval of row - other over the seeds, both protocols",
)


PROTOCOLS = ("paper", "probe")  # each row's linear evaluation: as its config says, and the normalised probe


def slug(name):
    """A row's folder name: a method's own name for any of its names ('SkeleMixCLR+' -> 'skelemixclr_plus',
    net/methods.py), else the name in lower case with `_` for spaces ('random init' -> 'random_init')."""
    return method_name(name) or name.lower().replace("+", "_plus").replace(" ", "_")


def read_json(path, overwrite=False):
    """The JSON at `path`, or None when it is absent or `overwrite` asks to redo what wrote it."""
    if overwrite or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def on_rank0(read, *args):
    """`read(*args)` as rank 0's disk answers it, on every rank: ranks on other nodes, whose disks may lack a
    file or hold an older one, would otherwise train while rank 0 skips, and wait forever."""
    return broadcast_object(read(*args) if is_main_process() else None)


def latest_checkpoint(work_dir, checkpoint_name):
    """The checkpoint `checkpoint_name` of the highest epoch in `work_dir`, or None."""
    found = later_checkpoints(work_dir, checkpoint_name, 0)
    return os.path.join(work_dir, found[-1]) if found else None


def finished(checkpoint):
    """Whether `checkpoint` is its run's last: its epoch is the num_epoch of the config it carries."""
    state = read_checkpoint(checkpoint, "checkpoint")
    return state["epoch"] >= saved_config(state).get("num_epoch", float("inf"))


def resume_point(work_dir, checkpoint_name, overwrite):
    """(latest checkpoint in work_dir or None, whether it is its run's last); (None, False) with `overwrite`."""
    latest = None if overwrite else latest_checkpoint(work_dir, checkpoint_name)
    return latest, bool(latest) and finished(latest)


class Orchestrator:
    """A processor that runs other processors (table, demo): its keys are `defaults`, explained by `help`."""
    defaults, help = {}, {}

    @classmethod
    def default_config(cls):
        return dict(cls.defaults)

    @classmethod
    def config_help(cls):
        return cls.help

    def __init__(self, cfg):
        self.cfg = cfg
        init_distributed(cfg["device"])  # under torchrun every rank runs every run; rank 0 writes the summary
        self.log = Logger(cfg["work_dir"], enabled=is_main_process())


class Table(Orchestrator):
    defaults, help = DEFAULTS, HELP

    def __init__(self, cfg):
        self.cfg = cfg
        if isinstance(cfg["data"], str):  # a data file names the arrays once for every table on them
            cfg["data"] = load_yaml(cfg["data"])
        for row in cfg["rows"]:
            if not isinstance(row, dict) or "name" not in row or "linear" not in row:
                raise ConfigError(f"table row {row!r} needs a name and a linear config")
            pretrain = row.get("pretrain")
            if pretrain is not None and not (isinstance(pretrain, list) and len(pretrain) == 2):
                raise ConfigError(f"table row {row['name']!r}: pretrain must be [processor, config file]")
            for config_file in [row["linear"]] + ([pretrain[1]] if pretrain else []):
                load_yaml(config_file)
        names = [row["name"] for row in cfg["rows"]]
        for pair in cfg["compare"]:
            if not (isinstance(pair, list) and len(pair) == 2 and all(name in names for name in pair)):
                raise ConfigError(f"table compare {pair!r}: each entry is [row, other row], named as in rows {names}")
        # Every run of every row is configured and checked before the first one trains: a typo in the last
        # row's linear_args fails now, not after the first rows have pretrained.
        for row in cfg["rows"]:
            for name, config_file, overrides in self.runs_of(row):
                _, run_cfg = self.run_config(name, config_file, "unused", cfg["seeds"][0], *overrides)
                validate(run_cfg)
        super().__init__(cfg)

    def runs_of(self, row):
        """(processor, config file, overrides) of each run of `row`: its pretraining, then both protocols."""
        runs = [(*row["pretrain"], [row.get("pretrain_args"), self.cfg["pretrain"]])] if row.get("pretrain") else []
        return runs + [("linear_evaluation", row["linear"], [row.get("linear_args"), self.cfg["linear"], settings])
                       for settings in ({}, PROBE)]

    def run_config(self, name, config_file, work_dir, seed, *overrides):
        """(class, config) of processor `name` with `config_file`, this table's data, work_dir and seed, and
        `overrides`."""
        cfg = self.cfg
        common = dict(work_dir=work_dir, seed=seed, device=cfg["device"], speed=cfg["speed"],
                      progress=cfg["progress"], overwrite=cfg["overwrite"])
        # Each layer nested first: a later one in the release's flat form overrides an earlier nested one.
        layers = (load_yaml(config_file), cfg["data"], common, *overrides)
        config = deep_merge(*(nest(layer, config_file) for layer in layers))
        return configure(name, config, {}, source=config_file)

    def run(self, name, config_file, work_dir, seed, *overrides):
        """Run `run_config`'s processor. A run a killed table left in work_dir (unless `overwrite`) is resumed from
        its latest checkpoint; when that is its last, a pretraining is not rerun (None is returned) and an
        evaluation, which only lacks its result, runs again. Rank 0's disk decides (`on_rank0`)."""
        cls, run_cfg = self.run_config(name, config_file, work_dir, seed, *overrides)
        latest, done = on_rank0(resume_point, work_dir, cls.checkpoint_name, self.cfg["overwrite"])
        if done:
            if "method" in run_cfg:
                return None
            run_cfg["overwrite"] = True
        elif latest:
            self.log(f"resuming {latest}, left by an interrupted table")
            run_cfg["resume"] = latest
        processor = cls(run_cfg)
        processor.start()
        return processor

    def run_row(self, row, seed):
        """Top-1 and top-5 of both protocols and the pretraining's final loss over chance (None for a
        baseline) of one row and seed; a finished one (its result.json) is read back unless `overwrite`.
        Rank 0's disk decides and its result travels to every rank: ranks on other nodes, whose disks may
        lack the file or hold an older one, would otherwise train while rank 0 skips, and wait forever."""
        work = os.path.join(self.cfg["work_dir"], slug(row["name"]), f"seed{seed}")
        done = os.path.join(work, "result.json")
        result = on_rank0(read_json, done, self.cfg["overwrite"])
        if result is not None:
            self.log(f"{row['name']}, seed {seed}: finished before, read from {done}")
            return result
        result = dict(self.train_row(row, seed, work), seed=seed, commit=git_commit())
        if is_main_process():
            with atomic_path(done) as tmp, open(tmp, "w") as f:
                json.dump(result, f, indent=1)
        return result

    def train_row(self, row, seed, work):
        weights, ratio = None, None
        if row.get("pretrain"):
            weights, ratio = self.pretrain_row(row, seed, work)
        result = dict(loss_over_chance=ratio)
        for protocol, folder, settings in (("paper", "linear", {}), ("probe", "probe", PROBE)):
            done = on_rank0(read_json, os.path.join(work, folder, "result.json"), self.cfg["overwrite"])
            if done is None:
                self.log(f"{row['name']}, seed {seed}: linear evaluation, {protocol} protocol ({row['linear']})")
                self.run("linear_evaluation", row["linear"], os.path.join(work, folder), seed,
                         row.get("linear_args"), self.cfg["linear"], settings, dict(weights=weights))
                done = on_rank0(read_json, os.path.join(work, folder, "result.json"))
            result[protocol] = dict(top1=done["final"]["top1"], top5=done["final"]["top5"])
        return result

    def pretrain_row(self, row, seed, work):
        """(weights, final loss over chance) of the row's pretraining: run (or resumed), or read from the
        pretrain.json an earlier table wrote after it."""
        record = os.path.join(work, "pretrain.json")
        done = on_rank0(read_json, record, self.cfg["overwrite"])
        if done is None:
            name, config_file = row["pretrain"]
            self.log(f"{row['name']}, seed {seed}: pretraining ({config_file})")
            pre = self.run(name, config_file, work, seed, row.get("pretrain_args"), self.cfg["pretrain"])
            if pre is None:  # finished, killed before pretrain.json: its last loss is not known here
                done = dict(weights=on_rank0(latest_checkpoint, work, "epoch{}_model.pt"), loss_over_chance=None)
            else:
                done = dict(weights=os.path.join(work, f"epoch{pre.cfg['num_epoch']}_model.pt"),
                            loss_over_chance=pre.stats[-1]["health/loss_over_chance"])
            if is_main_process():
                with atomic_path(record) as tmp, open(tmp, "w") as f:
                    json.dump(done, f, indent=1)
        return done["weights"], done["loss_over_chance"]

    def start(self):
        cfg, rows = self.cfg, []
        for row in cfg["rows"]:
            runs = [self.run_row(row, seed) for seed in cfg["seeds"]]
            ratios = [r["loss_over_chance"] for r in runs if r["loss_over_chance"] is not None]
            summary = dict(model=row["name"], runs=runs, loss_over_chance=statistics.mean(ratios) if ratios else None)
            for protocol in PROTOCOLS:
                summary[protocol], summary[f"{protocol}_std"] = mean_std([r[protocol]["top1"] for r in runs])
            rows.append(summary)
        comparisons = [self.compare(rows, *pair) for pair in cfg["compare"]]
        if is_main_process():
            print("\n" + self.format(rows, comparisons), flush=True)
            path = os.path.join(cfg["work_dir"], "table.json")
            with atomic_path(path) as tmp, open(tmp, "w") as f:
                json.dump(dict(results=rows, comparisons=comparisons, config=cfg), f, indent=1)
            self.log(f"written {path}")
        barrier()
        return rows

    @staticmethod
    def compare(rows, name, other):
        """The paired difference of rows `name` - `other` over their seeds, per protocol (processor/stats.py)."""
        by_name = {r["model"]: {run["seed"]: run for run in r["runs"]} for r in rows}
        a, b = by_name[name], by_name[other]
        seeds = sorted(set(a) & set(b))
        result = dict(row=name, other=other, seeds=seeds)
        for protocol in PROTOCOLS:
            mean, low, high = paired_interval([a[s][protocol]["top1"] for s in seeds],
                                              [b[s][protocol]["top1"] for s in seeds])
            result[protocol] = dict(difference=mean, low=low, high=high, verdict=verdict(low, high))
        return result

    def format(self, rows, comparisons=()):
        seeds = self.cfg["seeds"]
        which = f"mean ± std over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds[0]}"
        width = max([14, *(len(r["model"]) + 2 for r in rows)])
        lines = [f"linear evaluation top-1 %, {which}: paper protocol and normalised probe (docs/method.md)",
                 f"{'model':<{width}}{'paper':>14}{'probe':>14}{'loss/chance':>13}"]
        for r in rows:
            ratio = "-" if r["loss_over_chance"] is None else f"{r['loss_over_chance']:.3f}"
            cells = [f"{r[p]:.1f}" + (f" ± {r[p + '_std']:.1f}" if len(seeds) > 1 else "") for p in PROTOCOLS]
            lines.append(f"{r['model']:<{width}}" + "".join(f"{c:>14}" for c in cells) + f"{ratio:>13}")
        for c in comparisons:
            cells = [f"{p} {c[p]['difference']:+.1f} [{c[p]['low']:+.1f}, {c[p]['high']:+.1f}] {c[p]['verdict']}"
                     for p in PROTOCOLS]
            lines.append(f"{c['row']} - {c['other']}, paired 95 % interval over {len(c['seeds'])} seeds: "
                         + "; ".join(cells))
        return "\n".join(lines)
