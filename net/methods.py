"""The pretraining methods (docs/method.md §3): each one's preset of MoCo's arguments and every name it has.

A method is configuration of one wrapper (net/moco.py). Its preset sits between the code defaults and the
YAML file, so a config can still change any of it. A new method is one entry here and its YAML; a new loss
is also one function in net/.
"""
import copy

SKELEMIX = dict(head="mlp_bn", temperature=0.2)

# name -> its preset (model_args) and its other names: the paper's, the release's subcommand (docs/method.md §6,
# an alias of `pretrain` that checks the config agrees) and the stem of the release's config files.
METHODS = {
    "skeletonclr": dict(
        model_args=dict(head="mlp", temperature=0.07, swap_params=None),
        paper="SkeletonCLR", subcommand="pretrain_skeletonclr", config_stem="skeletonclr"),
    "skelemixclr": dict(
        model_args=dict(SKELEMIX, swap_params=[[2, 3, 7, 11, 1, 1.0]]),
        paper="SkeleMixCLR", subcommand="pretrain_skeletonclr_swap", config_stem="skelemixclr_swap"),
    "skelemixclr_plus": dict(
        model_args=dict(SKELEMIX, swap_params=[[2, 3, 7, 11, 3, 1.0]]),
        paper="SkeleMixCLR+", subcommand="pretrain_skeletonclr_multi_swapv2", config_stem="skelemixclr_multi_swap"),
}

# the release's subcommands -> the method they pretrain
SUBCOMMANDS = {method["subcommand"]: name for name, method in METHODS.items()}


def preset(name):
    """What method `name` sets before the YAML file: its model_args and its name."""
    return dict(model_args=copy.deepcopy(METHODS[name]["model_args"]), method=name)


def method_name(name):
    """The method called `name` by any of its names (SkeleMixCLR+, multi_swap's stem, ...), or None."""
    for method, entry in METHODS.items():
        if name in (method, entry["paper"], entry["subcommand"], entry["config_stem"]):
            return method
    return None
