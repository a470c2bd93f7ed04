"""The whole config checked before a run writes anything (docs/errors.md: refused values).

`validate(cfg)` runs first in Processor.__init__: a refused value is one line naming its key and value,
and since nothing is written into the work_dir yet, the corrected command runs in the same folder.
Checks that need what the run builds (queue_size against the batch, knn_k against the bank) stay
where that is known.
"""
import math
import os

from torchlight.config import ConfigError

CHOICES = dict(amp=("off", "bf16", "fp16"), stream=("joint", "motion", "bone"))


def check_counts(cfg):
    """Counts of the config are integers in range."""
    for key, low in (("batch_size", 1), ("test_batch_size", 1), ("num_workers", 0), ("num_epoch", 0),
                     ("save_interval", 1), ("eval_interval", 0), ("warm_up_epoch", 0)):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < low:
            raise ConfigError(f"{key} must be an integer >= {low}, got {cfg[key]!r}")
    steps = cfg.get("num_steps")  # `--num_steps` without a value reads as true
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise ConfigError(f"num_steps must be an integer >= 1 (or null to train num_epoch epochs), got {steps!r}")
    queue = (cfg.get("model_args") or {}).get("queue_size", "auto")
    if queue != "auto" and (not isinstance(queue, int) or isinstance(queue, bool) or queue < 1):
        raise ConfigError(f"model_args.queue_size must be an integer >= 1 or auto, got {queue!r}")


def number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_ranges(cfg):
    """Numbers that only make sense in a range: refused instead of silently training nonsense."""
    args = cfg.get("model_args") or {}
    if cfg["grad_clip"] is not None and not (number(cfg["grad_clip"]) and cfg["grad_clip"] >= 0):
        raise ConfigError(f"grad_clip must be a number >= 0 (or null for no clipping), got {cfg['grad_clip']!r}")
    knn_k = cfg.get("knn_k", [1])
    for k in (knn_k or [0]) if isinstance(knn_k, list) else [knn_k]:  # [] would write an empty result
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ConfigError(f"knn_k must be a non-empty list of integers >= 1, got {knn_k!r}")
    if "temperature" in args and not (number(args["temperature"]) and args["temperature"] > 0):
        raise ConfigError(f"model_args.temperature must be a number > 0, got {args['temperature']!r}")
    if "momentum" in args and not (number(args["momentum"]) and 0 <= args["momentum"] <= 1):
        raise ConfigError(f"model_args.momentum (the key encoder's) must be in [0, 1], got {args['momentum']!r}")
    if "feature_dim" in args and not (isinstance(args["feature_dim"], int) and args["feature_dim"] > 0):
        raise ConfigError(f"model_args.feature_dim must be an integer >= 1, got {args['feature_dim']!r}")
    if cfg["sync_bn"] and cfg["compile"]:
        raise ConfigError("sync_bn and compile are both true: SyncBatchNorm does not trace under "
                          "torch.compile (a graph break at every BatchNorm); set one of them false")
    threads = cfg["cpu_threads"]
    if threads != "auto" and not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
        raise ConfigError(f"cpu_threads must be auto or an integer >= 1, got {threads!r}")
    for key, choices in CHOICES.items():
        if cfg[key] not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, not {cfg[key]!r}")


def check_data_files(cfg):
    """The feeders' data and label files exist: a wrong path is refused before the work_dir is made. Relative
    paths are read from the current directory, which the message names."""
    for feeder in ("train_feeder_args", "test_feeder_args"):
        for key in ("data_path", "label_path"):
            path = (cfg.get(feeder) or {}).get(key)
            if isinstance(path, str) and not os.path.isfile(os.path.expanduser(path)):
                where = "" if os.path.isabs(path) else f" (relative to the current directory {os.getcwd()})"
                raise ConfigError(f"{feeder}.{key} {path}: no such file{where}")


def check_files(cfg):
    """Files the run reads: `weights` and `resume` name existing files; pretraining takes no weights."""
    for key in ("weights", "resume"):
        path = cfg[key]
        if path is None:
            continue
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"{key} {path!r} names no file: give a checkpoint's path or leave {key} out")
        if not os.path.isfile(path):
            raise ConfigError(f"{key} {path}: no such file")
    if cfg.get("method") is not None and cfg["weights"] is not None:
        raise ConfigError(f"weights {cfg['weights']}: pretraining starts from a random encoder and does not "
                          "load weights; continue a pretraining with --resume, evaluate weights with "
                          "linear_evaluation or finetune_evaluation")


def expand_home(cfg):
    """`~` in the paths of `cfg` is the home folder (`work_dir: ~/x` must not make a folder named ~)."""
    for key in ("work_dir", "weights", "resume"):
        if isinstance(cfg.get(key), str) and cfg[key]:
            cfg[key] = os.path.expanduser(cfg[key])


def validate(cfg):
    """Every check of the config alone, in one place."""
    check_counts(cfg)
    check_ranges(cfg)
    check_files(cfg)
    check_data_files(cfg)
