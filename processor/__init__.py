"""Processor registry: `python main.py <name> ...` runs PROCESSORS[name].

The three pretraining methods are one processor configured by the config's `method` key (docs/method.md §3);
net/methods.py holds each method's preset and names. The release's subcommands stay as aliases of `pretrain`
that name a method.
"""
from net.methods import METHODS, SUBCOMMANDS, preset

PROCESSORS = {
    "pretrain": "processor.pretrain.Pretrain",
    **{alias: "processor.pretrain.Pretrain" for alias in SUBCOMMANDS},
    "linear_evaluation": "processor.linear.LinearEvaluation",
    "finetune_evaluation": "processor.evaluation.FinetuneEvaluation",
    "knn_evaluation": "processor.evaluation.KNNEvaluation",
    "table": "processor.table.Table",
    "demo": "processor.demo.Demo",
}


def pretraining_method(name, config, overrides, source):
    """The method a pretraining run trains: the config's `method`, which an alias subcommand must agree with."""
    from torchlight.config import ConfigError
    method = overrides.get("method", config.get("method"))
    alias = SUBCOMMANDS.get(name)
    if method is None and alias is None:
        raise ConfigError(f"{source} names no method: set method to one of {', '.join(METHODS)}")
    if method is not None and method not in METHODS:
        raise ConfigError(f"method {method!r} in {source} is unknown; known: {', '.join(METHODS)}")
    if alias and method is not None and method != alias:
        raise ConfigError(f"{name} pretrains {alias} but {source} says method {method}: "
                          f"run `python main.py pretrain` or fix the config's method")
    return method or alias


SPEEDS = ("exact", "fast")


def fast_settings(device, sync_bn):
    """What `speed: fast` sets (docs/gpu.md): bf16 autocast, TF32, augmentation on the device, up to 8 loader
    workers and, on CUDA without sync_bn (they do not combine), torch.compile. On CUDA the card decides
    (processor.device's `cuda_fast_path`): bf16 from compute capability 8.0, else fp16 or no autocast, and
    compile only where inductor can build its kernels. On a CPU bf16 only where it has native bf16 kernels
    (elsewhere it is slower than fp32) and no compile (slower than eager there)."""
    import os

    import torch

    from processor.device import cuda_fast_path
    from torchlight.util import cpu_amp_is_fast
    cuda = isinstance(device, int) or str(device).startswith("cuda") or (
        device in (None, "auto") and torch.cuda.is_available())
    fast = dict(tf32=True, device_augment=True, num_workers=min(8, os.cpu_count() or 1))
    if cuda:
        amp, compiles = cuda_fast_path(device)
        fast.update(amp=amp, compile=compiles and not sync_bn)
    elif cpu_amp_is_fast("bf16"):
        fast["amp"] = "bf16"
    return fast


def configure(name, config=None, overrides=None, source="config", need_method=True):
    """The processor class registered as `name` and its config: overrides > config > preset > defaults.

    `need_method` false (help): a pretraining config without a method gets no preset instead of an error.
    `speed: fast` replaces the code defaults of the speed keys by `fast_settings`; a key the config or the
    command line names keeps its value (`--speed fast --amp off` runs fast without autocast)."""
    from processor.flat_config import nest, nest_overrides
    from torchlight.config import ConfigError, merge
    from torchlight.util import import_class
    if name not in PROCESSORS:
        raise ConfigError(f"unknown processor {name!r}; known: {', '.join(PROCESSORS)}")
    config, overrides = nest(config or {}, source), nest_overrides(overrides or {})
    cls = import_class(PROCESSORS[name])
    method_preset = {}
    if "method" in cls.default_config() and (need_method or overrides.get("method", config.get("method"))
                                             or name in SUBCOMMANDS):
        method = pretraining_method(name, config, overrides, source)
        method_preset = preset(method)
    defaults = merge(cls.default_config(), method_preset, {}, source="preset")
    cfg = merge(defaults, config, overrides, source=source)
    named = set(config) | {key.split(".")[0] for key in overrides}
    if cfg.get("num_steps") is not None and "num_epoch" in named:  # one would silently win
        raise ConfigError(f"num_epoch {cfg['num_epoch']} and num_steps {cfg['num_steps']} are both given ({source} "
                          "and its bases, or the command line): give one; --num_steps null trains num_epoch epochs")
    if cfg.get("speed", "exact") not in SPEEDS:
        raise ConfigError(f"speed must be exact or fast, not {cfg['speed']!r}")
    if cfg.get("speed") == "fast" and "amp" in cfg:  # a processor (a table passes speed on to its runs)
        cfg.update({k: v for k, v in fast_settings(cfg["device"], cfg["sync_bn"]).items() if k not in named})
    check_nested_keys(cfg)
    return cls, cfg


def named_args(cls):
    """({argument: default or None} of `cls`'s constructor, whether it also takes any keyword (**kwargs))."""
    import inspect
    params = inspect.signature(cls).parameters.values()
    named = {p.name: None if p.default is p.empty else p.default
             for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def check_nested_keys(cfg):
    """Every key of model_args, encoder and the feeders' args is an argument of the class it is passed to: the
    model (and the classes a factory passes the rest to, its `arguments_of`), the encoder `encoder.name` names
    (registered or dotted, net/encoders.py) and the feeder. `encoder` and `layout` are top-level keys the
    processor passes on, never model_args' (nor `layout` an encoder key). A typo is refused, also by
    --print_config."""
    from torch.nn import Module
    from torch.utils.data import Dataset

    from torchlight.config import ConfigError
    from torchlight.util import import_class
    checks = []
    if "model" in cfg:
        model = import_class(cfg["model"], Module)
        known, anything = named_args(model)
        for target in getattr(model, "arguments_of", ()):  # a factory passing the rest on (net.methods)
            more, anything = named_args(target)
            known = {**known, **more}
        checks.append(("model_args", None if anything else set(known) - {"encoder", "layout"}))
    if isinstance(cfg.get("encoder"), dict):
        from net.encoders import DEFAULT_ENCODER, encoder_class
        known, anything = named_args(encoder_class(cfg["encoder"].get("name", DEFAULT_ENCODER)))
        checks.append(("encoder", None if anything else (set(known) - {"layout"}) | {"name"}))
    if "feeder" in cfg:
        known, anything = named_args(import_class(cfg["feeder"], Dataset))
        checks += [(key, None if anything else known) for key in ("train_feeder_args", "test_feeder_args")]
    for key, known in checks:
        unknown = sorted(set(cfg.get(key) or {}) - set(known)) if known is not None else []
        if unknown:
            hint = " (layout is a top-level key)" if unknown[0] == "layout" else \
                " (encoder is a top-level key)" if unknown[0] == "encoder" else ""
            raise ConfigError(f"unknown key {key}.{unknown[0]}: known are {', '.join(sorted(known))}{hint}")


def describe(name, cls, cfg):
    """`python main.py <name> --help`: every key of `cfg` with its value and meaning, then the arguments of the
    model (and of the encoder it wraps) and of the feeders, each default from its signature unless set."""
    from torch.nn import Module

    from torchlight.config import argument_help, show
    from torchlight.util import import_class
    meanings = cls.config_help()
    lines = [f"python main.py {name} [--config X.yaml] [--key value ...] [--print_config]",
             f"{cls.__name__}: every key, its value here (the default unless set) and its meaning", ""]
    lines += [f"  {key} = {show(value)}\n      {meanings.get(key, '')}" for key, value in cfg.items()]
    nested = []
    if "model" in cfg:
        model = import_class(cfg["model"], Module)
        nested.append(("model_args", model, cfg["model_args"]))
        nested += [("model_args", target, cfg["model_args"]) for target in getattr(model, "arguments_of", ())]
    if "encoder" in cfg:
        from net.encoders import DEFAULT_ENCODER, encoder_class
        nested.append(("encoder", encoder_class(cfg["encoder"].get("name", DEFAULT_ENCODER)), cfg["encoder"]))
    if "feeder" in cfg:
        nested.append(("train_feeder_args", import_class(cfg["feeder"]), cfg["train_feeder_args"]))
    for key, target, given in nested:
        lines += ["", f"{key} ({target.__module__}.{target.__qualname__}):"]
        lines += [f"  {key}.{arg} = {show(given.get(arg, default))}\n      {meaning}"
                  for arg, (default, meaning) in argument_help(target).items() if meaning]  # built, not configured
    return "\n".join(lines)
