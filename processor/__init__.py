"""Processor registry: `python main.py <name> ...` runs PROCESSORS[name].

The three pretraining methods are one processor configured by the config's `method` key (SPEC §3):
METHODS holds each method's preset, which sits between the code defaults and the YAML file, so a config
can still change any of it. The release's subcommands stay as aliases of `pretrain` that name a method.
"""
SKELEMIX = dict(head="mlp_bn", temperature=0.2)

# method name -> preset (a new method is one entry here and its YAML)
METHODS = {
    "skeletonclr": dict(model_args=dict(head="mlp", temperature=0.07, swap_params=None)),
    "skelemixclr": dict(model_args=dict(SKELEMIX, swap_params=[[2, 3, 7, 11, 1, 1.0]])),
    "skelemixclr_plus": dict(model_args=dict(SKELEMIX, swap_params=[[2, 3, 7, 11, 3, 1.0]])),
}

# the release's subcommands (SPEC §6) -> the method they pretrain
ALIASES = {
    "pretrain_skeletonclr": "skeletonclr",
    "pretrain_skeletonclr_swap": "skelemixclr",
    "pretrain_skeletonclr_multi_swapv2": "skelemixclr_plus",
}

PROCESSORS = {
    "pretrain": "processor.pretrain.Pretrain",
    **{alias: "processor.pretrain.Pretrain" for alias in ALIASES},
    "linear_evaluation": "processor.evaluation.LinearEvaluation",
    "finetune_evaluation": "processor.evaluation.FinetuneEvaluation",
    "knn_evaluation": "processor.evaluation.KNNEvaluation",
    "table": "processor.table.Table",
    "demo": "processor.demo.Demo",
}


def pretraining_method(name, config, overrides, source):
    """The method a pretraining run trains: the config's `method`, which an alias subcommand must agree with."""
    from torchlight.config import ConfigError
    method = overrides.get("method", config.get("method"))
    alias = ALIASES.get(name)
    if method is None and alias is None:
        raise ConfigError(f"{source} names no method: set method to one of {', '.join(METHODS)}")
    if method is not None and method not in METHODS:
        raise ConfigError(f"method {method!r} in {source} is unknown; known: {', '.join(METHODS)}")
    if alias and method is not None and method != alias:
        raise ConfigError(f"{name} pretrains {alias} but {source} says method {method}: "
                          f"run `python main.py pretrain` or fix the config's method")
    return method or alias


def configure(name, config=None, overrides=None, source="config", need_method=True):
    """The processor class registered as `name` and its config: overrides > config > preset > defaults.

    `need_method` false (help): a pretraining config without a method gets no preset instead of an error."""
    from torchlight.config import ConfigError, merge
    from torchlight.util import import_class
    if name not in PROCESSORS:
        raise ConfigError(f"unknown processor {name!r}; known: {', '.join(PROCESSORS)}")
    config, overrides = config or {}, overrides or {}
    cls = import_class(PROCESSORS[name])
    preset = {}
    if "method" in cls.default_config() and (need_method or overrides.get("method", config.get("method"))
                                             or name in ALIASES):
        method = pretraining_method(name, config, overrides, source)
        preset = dict(METHODS[method], method=method)
    defaults = merge(cls.default_config(), preset, {}, source="preset")
    return cls, merge(defaults, config, overrides, source=source)


def describe(name, cls, cfg):
    """`python main.py <name> --help`: every key of `cfg` with its value and meaning, then the arguments of the
    model (and of the encoder it wraps) and of the feeders, each default from its signature unless set."""
    from torchlight.config import argument_help, show
    from torchlight.util import import_class
    meanings = cls.config_help()
    lines = [f"python main.py {name} [--config X.yaml] [--key value ...] [--print_config]",
             f"{cls.__name__}: every key, its value here (the default unless set) and its meaning", ""]
    lines += [f"  {key} = {show(value)}\n      {meanings.get(key, '')}" for key, value in cfg.items()]
    nested = []
    if "model" in cfg:
        model = import_class(cfg["model"])
        nested.append(("model_args", model, cfg["model_args"]))
        encoder = cfg["model_args"].get("base_encoder", argument_help(model).get("base_encoder", (None,))[0])
        if encoder:
            nested.append(("model_args", import_class(encoder), cfg["model_args"]))
    if "feeder" in cfg:
        nested.append(("train_feeder_args", import_class(cfg["feeder"]), cfg["train_feeder_args"]))
    for key, target, given in nested:
        lines += ["", f"{key} ({target.__module__}.{target.__qualname__}):"]
        lines += [f"  {key}.{arg} = {show(given.get(arg, default))}\n      {meaning}"
                  for arg, (default, meaning) in argument_help(target).items()]
    return "\n".join(lines)
