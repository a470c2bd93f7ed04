"""Encoders: the contract every backbone meets, the registry that names them, and the pooling and heads that
belong to the methods around them (docs/design.md: The encoder contract).

The contract. An encoder is an `nn.Module`
- built from its own keyword arguments, plus `in_channels` (coordinates per joint) and, where its
  constructor takes one, `layout` (the skeleton layout's name, net/utils/layouts.py, for its graph);
- whose `forward(x)` maps a clip batch (N, C, T, V, M) to a feature map (N, M, C', T', V);
- that declares `out_channels` (C') and `temporal_stride` (T / T', the steps of SkeleMix's region grid).
Nothing else: no classifier, no pooling, no masked pooling. Pooling (`pool`), SkeleMix's masked pooling
(net/skelemix.py) and the heads (`Network`) are the method's.

Two optional capabilities: `init_weights()`, called by the `Network` around the encoder once its head exists
(ST-GCN's release initialisation, CTR-GCN's and MAMP's official ones), and `forward_stacked(x, groups)`: where
x stacks `groups` passes group-major (G·N clips), it returns their G feature maps stacked (G, N, M, C', T', V),
each pass with BatchNorm statistics of its own, as G separate `forward` calls in order would compute (a query
and its mixes in one call).
`feature_maps` uses it where an encoder has it and falls back to G calls otherwise.
"""
import inspect

import torch
import torch.nn as nn

from torchlight.config import check_type
from torchlight.util import import_class

# short name -> encoder class, by dotted name (one line per encoder file) or the class itself
ENCODERS = {
    "st_gcn": "net.st_gcn.STGCN",
    "ctrgcn": "net.ctrgcn.CTRGCN",
    "mamp": "net.mamp.MAMPTransformer",
}
DEFAULT_ENCODER = "st_gcn"


def encoder_class(name):
    """The encoder class registered as `name`, or at dotted path `name` (an encoder outside the registry)."""
    if name in ENCODERS:  # a dotted name, or the class itself
        entry = ENCODERS[name]
        return import_class(entry, nn.Module) if isinstance(entry, str) else entry
    if "." not in str(name):
        raise ValueError(f"unknown encoder {name!r}; registered: {', '.join(ENCODERS)} (or a dotted class path)")
    return import_class(name, nn.Module)  # a config's dotted name: an nn.Module class, never a function


def build_encoder(spec, layout=None):
    """The encoder `spec` = {name, <its own arguments>} describes (name: DEFAULT_ENCODER when absent; an argument
    at null: its default), given `layout` where its constructor takes one."""
    args = {k: v for k, v in (spec or {}).items() if v is not None}  # null: the argument's default
    cls = encoder_class(args.pop("name", DEFAULT_ENCODER))
    parameters = inspect.signature(cls).parameters
    if layout is not None and "layout" in parameters:
        args.setdefault("layout", layout)
    defaults = {k: p.default for k, p in parameters.items() if p.default is not p.empty}
    args = {k: check_type(v, defaults.get(k), f"encoder.{k}", "encoder") for k, v in args.items()}
    try:
        return cls(**args)
    except TypeError as e:
        if "argument" not in str(e):
            raise
        raise ValueError(f"encoder {cls.__name__}: {e}") from None


def pool(fmap):
    """The clip's features: the mean of a feature map (N, M, C', T', V) over T' and V, then over the M bodies."""
    return fmap.mean((3, 4)).mean(1)


def feature_maps(encoder, x, groups):
    """The G = `groups` feature maps of x stacking G passes group-major, each pass with its own BatchNorm
    statistics: one `forward_stacked` call where the encoder has it, else G `forward` calls in order."""
    if groups > 1 and hasattr(encoder, "forward_stacked"):
        return encoder.forward_stacked(x, groups).unbind(0)
    return [encoder(clips) for clips in x.chunk(groups)]


def _flat_keys(module, state_dict, prefix, local_metadata):
    """State-dict hook: `<prefix>encoder.<key>` saved as `<prefix><key>`, beside `<prefix>fc.*`."""
    inner = prefix + "encoder."
    for key in [k for k in state_dict if k.startswith(prefix)]:  # re-inserted in order: the encoder's keys first
        state_dict[prefix + key.removeprefix(inner) if key.startswith(inner) else key] = state_dict.pop(key)


def _nested_keys(module, state_dict, prefix, *args):
    """Load pre-hook: the inverse of `_flat_keys`."""
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "fc.")]:
        state_dict[prefix + "encoder." + key[len(prefix):]] = state_dict.pop(key)


class Network(nn.Module):
    """An encoder, `pool` and a head `fc`: evaluation's classifier network, and MoCo's query and key encoders
    (the projection head). Its state dict holds the encoder's own keys beside `fc.*`, the names of the
    release's checkpoints (`encoder_q.st_gcn_networks.0...`, `encoder_q.fc...`)."""

    def __init__(self, encoder, head):
        super().__init__()
        self.encoder, self.fc = encoder, head
        self.register_state_dict_post_hook(_flat_keys)
        self.register_load_state_dict_pre_hook(_nested_keys)
        self.init_weights()

    def init_weights(self):
        """The encoder's `init_weights` where it has one (the contract's optional initialisation), then the
        head's, as the release initialised encoder and head together once both were built."""
        if hasattr(self.encoder, "init_weights"):
            self.encoder.init_weights()
        init_like_release(self.fc)

    def compile(self, *args, **kwargs):
        """The encoder compiled in place (the method's passes call it directly), its stacked passes too."""
        self.encoder.compile(*args, **kwargs)
        if hasattr(self.encoder, "forward_stacked"):
            self.encoder.forward_stacked = torch.compile(self.encoder.forward_stacked, *args, **kwargs)

    def forward(self, x, return_features=False):
        """(N, C, T, V, M) -> `fc` of the pooled features; return_features: the pooled (N, C') features."""
        features = pool(self.encoder(x))
        return features if return_features else self.fc(features)


class Classifier(Network):
    """Evaluation's network: the encoder `encoder` = {name, <its arguments>} describes and a linear classifier.

    Args:
        encoder: the encoder: {name: st_gcn | <registered> | <dotted class>, <its own arguments>}
        num_class: outputs of the classifier `fc`
        layout: the skeleton layout, for an encoder built on its graph
    """

    def __init__(self, encoder=None, num_class=60, layout=None):
        backbone = build_encoder(encoder, layout)
        super().__init__(backbone, nn.Linear(backbone.out_channels, num_class))


def init_like_release(module):
    """Conv/linear weights ~ N(0, 0.02), biases 0; BN weights ~ N(1, 0.02), biases 0 (docs/method.md §2)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            if m.affine:
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
