"""Processor registry: `python main.py <name> ...` runs PROCESSORS[name].

The three pretraining methods are one processor with different method presets (SPEC §3); a preset
sits between the code defaults and the YAML file, so a config can still change any of it.
"""
SKELEMIX = dict(head="mlp_bn", temperature=0.2)

PROCESSORS = {
    "pretrain_skeletonclr": ("processor.pretrain.Pretrain",
                             dict(model_args=dict(head="mlp", temperature=0.07, swap_params=None))),
    "pretrain_skeletonclr_swap": ("processor.pretrain.Pretrain",
                                  dict(model_args=dict(SKELEMIX, swap_params=[[2, 3, 7, 11, 1, 1.0]]))),
    "pretrain_skeletonclr_multi_swapv2": ("processor.pretrain.Pretrain",
                                          dict(model_args=dict(SKELEMIX, swap_params=[[2, 3, 7, 11, 3, 1.0]]))),
    "linear_evaluation": ("processor.evaluation.LinearEvaluation", {}),
    "finetune_evaluation": ("processor.evaluation.FinetuneEvaluation", {}),
    "knn_evaluation": ("processor.evaluation.KNNEvaluation", {}),
    "table": ("processor.table.Table", {}),
    "demo": ("processor.demo.Demo", {}),
}


def configure(name, config=None, overrides=None, source="config"):
    """The processor class registered as `name` and its config: overrides > config > preset > defaults."""
    from torchlight.config import ConfigError, merge
    from torchlight.util import import_class
    if name not in PROCESSORS:
        raise ConfigError(f"unknown processor {name!r}; known: {', '.join(PROCESSORS)}")
    target, preset = PROCESSORS[name]
    cls = import_class(target)
    defaults = merge(cls.default_config(), preset, {}, source="preset")
    return cls, merge(defaults, config or {}, overrides or {}, source=source)
