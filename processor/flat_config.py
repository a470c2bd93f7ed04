"""The original release's flat configuration, nested: the one place it is read (docs/design.md: configuration).

The release (and our configs before the encoder contract) kept the encoder in `model_args`: its class as
`model_args.base_encoder` (pretraining) or `model` (evaluation), ST-GCN's arguments beside MoCo's, and the
layout as `model_args.graph_args.layout`. Nested, the encoder is `encoder: {name, <its own arguments>}`, the
layout is the dataset's `layout`, and `model_args` keeps the method's settings (and the class count).
"""
import copy

from torchlight.config import ConfigError

# ST-GCN's arguments as the flat form wrote them in model_args
STGCN_ARGS = ("in_channels", "hidden_channels", "hidden_dim", "dropout", "edge_importance_weighting", "kernels")
# the classes the flat form named for ST-GCN (pretraining's base_encoder, evaluation's model)
STGCN_CLASSES = ("net.st_gcn.Model", "net.st_gcn_fast.Model")


def _put(config, key, value, source, flat_key):
    """Set `config[key]` (a dotted key: encoder.x) unless the nested form gives another value there."""
    *path, leaf = key.split(".")
    node = config
    for part in path:
        node = node.setdefault(part, {}) if isinstance(node.get(part), (dict, type(None))) else None
        if node is None:
            raise ConfigError(f"{source}: {part!r} must be a mapping to take {flat_key}")
    if leaf in node and node[leaf] != value:
        raise ConfigError(f"{source}: {flat_key} {value!r} contradicts {key} {node[leaf]!r}: give one of them")
    node[leaf] = value


def nest(config, source="config"):
    """`config` (a YAML mapping or a saved run's config) in the nested form; a nested config comes back equal."""
    config = copy.deepcopy(config or {})
    if config.get("model") in STGCN_CLASSES:
        del config["model"]  # evaluation's default network is the classifier on the configured encoder
    args = config.get("model_args")
    if not isinstance(args, dict):
        return config
    base = args.pop("base_encoder", None)
    if base is not None:
        _put(config, "encoder.name", "st_gcn" if base in STGCN_CLASSES else base, source, "model_args.base_encoder")
    for key in [k for k in STGCN_ARGS if k in args]:
        _put(config, f"encoder.{key}", args.pop(key), source, f"model_args.{key}")
    graph = args.pop("graph_args", None) or {}
    if graph.get("strategy", "spatial") != "spatial":
        raise ConfigError(f"{source}: model_args.graph_args.strategy {graph['strategy']!r}: only spatial is defined")
    if "layout" in graph:
        _put(config, "layout", graph["layout"], source, "model_args.graph_args.layout")
    return config


def nest_overrides(overrides, source="command line"):
    """Dotted command-line `overrides` in the nested form (`--model_args.hidden_dim 64` is `--encoder.hidden_dim`)."""
    out = {}
    for dotted, value in overrides.items():
        if dotted == "model" and value in STGCN_CLASSES:
            continue
        if dotted.split(".")[0] != "model_args":
            out[dotted] = value
            continue
        flat = {}
        _put(flat, dotted, value, source, dotted)
        out.update(dict(_leaves(nest(flat, source))) or {dotted: value})
    return out


def _leaves(config, prefix=""):
    """(dotted key, value) of every leaf of a nested mapping (empty mappings left out)."""
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
