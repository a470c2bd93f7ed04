"""The pretraining methods (docs/method.md §3): each one's preset of MoCo's arguments and every name it has.

A method is configuration of one wrapper (net/moco.py). Its preset sits between the code defaults and the
YAML file, so a config can still change any of it. A new method is one entry here and its YAML; a new loss
is also one function in net/.
"""
import copy
import inspect

import torch.nn as nn

from net.encoders import build_encoder
from net.moco import MoCo
from net.skelemix import SkeleMix, SkeleMixViews, check_mix_losses, mix_settings
from net.utils.layouts import DEFAULT_LAYOUT
from torchlight.util import import_class

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


# short name -> mix class, by dotted name or the class itself (docs/design.md: the mix interface); named by
# `model_args.mixes`
MIXES = {"skelemix": "net.skelemix.SkeleMixViews"}


def build_mix(spec, layout, temporal_stride):
    """The mix `spec` = {name: <registered> | <dotted class>, <its arguments>} describes, given the layout and
    the encoder's temporal stride where its constructor takes them."""
    args = dict(spec)
    name = args.pop("name", None)
    if name is None or (name not in MIXES and "." not in str(name)):
        raise ValueError(f"model_args.mixes: unknown mix {name!r}; registered: {', '.join(MIXES)} (or a dotted class)")
    cls = MIXES.get(name, name)
    cls = import_class(cls, nn.Module) if isinstance(cls, str) else cls
    accepted = inspect.signature(cls).parameters
    context = dict(layout=layout, temporal_stride=temporal_stride)
    return cls(**args, **{k: v for k, v in context.items() if k in accepted and k not in args})


def pretraining_model(encoder=None, layout=None, swap_params=None, mix_mode="swap", mix_region="parts",
                      mix_time="scaled", mix_losses="both", mixes=None, num_class=None, **moco_args):
    """MoCo from a config's parts (docs/design.md): the encoder `encoder` describes, one SkeleMix mix per row of
    `swap_params` and then the mixes `mixes` names; every other argument is MoCo's.

    Args:
        encoder: the config's encoder: {name: st_gcn | <registered> | <dotted class>, <its own arguments>}
        layout: the skeleton layout (the config's `layout`)
        swap_params: SkeleMix per query view: rows [spa_l, spa_u, tem_l, tem_u, repeat, weight]; none: SkeletonCLR
        mix_mode: what fills the SkeleMix region: swap (the partner's joints) | zeros | gaussian
        mix_region: the joints SkeleMix mixes: parts (whole body parts) | random (random joints)
        mix_time: scaled (tem_l..tem_u are steps of the paper's 16-step grid, scaled to the clip's) | clamped
            (steps of the clip's own grid, cut at its length: spatial-only at 32 frames)
        mix_losses: both (SkeleMix's L_p and L_c, halved) | p | c (one alone: an ablation)
        mixes: further mixes, one query view each: [{name: <registered> | <dotted class>, <its arguments>}]
        num_class: the dataset's class count: accepted and unused (evaluation's classifier takes it)
    """
    check_mix_losses(mix_losses)  # also where no SkeleMix view uses it (SkeletonCLR), as mix_time and mix_mode
    backbone = build_encoder(encoder, layout)
    stride = backbone.temporal_stride
    skelemix = SkeleMix(layout=layout or DEFAULT_LAYOUT, temporal_stride=stride, mode=mix_mode, region=mix_region,
                        time_range=mix_time)
    parts = [SkeleMixViews(setting, skelemix, mix_losses) for setting in mix_settings(swap_params)]
    parts += [build_mix(spec, layout or DEFAULT_LAYOUT, stride) for spec in mixes or []]
    return MoCo(backbone, parts, **moco_args)


pretraining_model.arguments_of = (MoCo,)  # `--help` lists MoCo's arguments among model_args too
pretraining_model.builds = MoCo  # a config may name this factory as its model (torchlight.util.import_class)
