"""Configuration: code defaults < YAML file < command line, one namespace, unknown keys rejected."""
import copy
import inspect
import os
import re

import yaml


class ConfigError(ValueError):
    """A bad configuration: the message names the file, key or value."""


def replaces(old, new):
    """Whether mapping `new` replaces `old` instead of merging into it: it names another component (another
    `name`, as `encoder: {name: ctrgcn, ...}` over `encoder: {name: st_gcn, hidden_channels: 8}`)."""
    return isinstance(old, dict) and isinstance(new, dict) and new.get("name", old.get("name")) != old.get("name")


def deep_merge(*dicts):
    """Nested dicts merged left to right (later wins): the one merge of configs assembled from several places."""
    out = {}
    for d in dicts:
        for k, v in (d or {}).items():
            merge_into = isinstance(v, dict) and isinstance(out.get(k), dict) and not replaces(out[k], v)
            out[k] = deep_merge(out[k], v) if merge_into else v
    return out


MAX_BASE_DEPTH = 8  # _base_ chains longer than this are refused: no config needs them, a loop-like chain does


def load_yaml(path, _seen=(), _read=None):
    """Read a YAML mapping from `path`, on top of the files its `_base_` names (paths relative to it).

    An experiment's YAML names its bases (`_base_: ../small/skelemixclr_plus.yaml`, or a list, later
    ones winning) and holds only what differs, as MMAction2's configs do. A child's `key: null` replaces a
    base's value by null, which is each key's "none" (its meaning in `--help`); an evaluation's encoder
    widths at null come from the checkpoint. A file reached twice (itself, or one base through two paths)
    and chains deeper than MAX_BASE_DEPTH are one-line errors.
    """
    _read = set() if _read is None else _read
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if os.path.realpath(path) in _seen:
        raise ConfigError(f"config file {path} inherits from itself through _base_")
    if len(_seen) > MAX_BASE_DEPTH:
        raise ConfigError(f"config file {path}: _base_ chain deeper than {MAX_BASE_DEPTH} files")
    if os.path.realpath(path) in _read:
        raise ConfigError(f"config file {path} is a _base_ twice in one config: name each base once")
    _read.add(os.path.realpath(path))
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"malformed YAML in {path}{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(data).__name__}")
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"_base_ in {path} must be a file name or a list of them, not {bases!r}")
    here = os.path.dirname(path)
    seen = (*_seen, os.path.realpath(path))
    return deep_merge(*(load_yaml(os.path.join(here, b), seen, _read) for b in bases), data)


def parse_overrides(argv):
    """Turn ['--a.b', '3', '--c=x', '--flag'] into {'a.b': 3, 'c': 'x', 'flag': True} (values read as YAML)."""
    out, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"expected --key value on the command line, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            else:
                value = "true"
        try:  # an empty value ("$UNSET") stays '' for the key's check to name, never YAML's null
            out[key] = "" if value == "" else yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"malformed value for --{key}: {value!r}") from None
        i += 1
    return out


def merge(defaults, config, overrides, source="config"):
    """Deep-merge `config` then dotted `overrides` onto `defaults`; unknown top-level keys are an error."""
    cfg = copy.deepcopy(defaults)
    for key, value in config.items():
        _set(cfg, [key], value, f"{source}", defaults)
    for dotted, value in overrides.items():
        _set(cfg, dotted.split("."), value, "command line", defaults)
    return cfg


def _set(cfg, path, value, source, defaults):
    if path[0] not in defaults:
        raise ConfigError(f"unknown key {'.'.join(path)!r} in {source}")
    node = cfg
    for part in path[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"key {'.'.join(path)!r} in {source}: {part!r} is not a mapping")
        node = node[part]
    leaf = path[-1]
    if replaces(node.get(leaf), value):
        node[leaf] = {}
    if leaf == "name" and len(path) > 1 and node.get("name", value) != value:
        node.clear()  # `--encoder.name other`: another component, without the previous one's arguments
    if isinstance(node.get(leaf), dict) and isinstance(value, dict):
        for k, v in value.items():
            _set(cfg, path + [k], v, source, defaults)
    else:
        node[leaf] = check_type(value, _default_at(defaults, path), ".".join(path), source)


def _default_at(defaults, path):
    """The code default at `path`, or None where there is none (free-form keys such as model_args.*)."""
    for part in path:
        if not isinstance(defaults, dict) or part not in defaults:
            return None
        defaults = defaults[part]
    return defaults


def check_type(value, default, key, source):
    """`value` if it has its default's type: ints pass as floats, YAML's off/no/on/yes words as strings.

    String keys are not checked further: their readers know more (`device` takes 'cuda:1' or 1).
    """
    if default is None or value is None or isinstance(default, dict):
        return value
    if isinstance(default, str):
        return ("on" if value else "off") if isinstance(value, bool) else value  # YAML 1.1: `amp: off` is false
    if isinstance(default, float) and not isinstance(value, bool):
        try:
            return float(value)  # also '1e-4', which YAML 1.1 reads as a string
        except (TypeError, ValueError):
            pass
    elif isinstance(value, type(default)) and isinstance(value, bool) == isinstance(default, bool):
        return value
    raise ConfigError(f"key {key!r} in {source}: expected {type(default).__name__} like the default "
                      f"{default!r}, got {value!r}")


def argument_help(cls):
    """{argument: (default, meaning)} of `cls`'s constructor: defaults from its signature, meanings from the
    `name: meaning` lines of its docstring's `Args:` section ('' where it has none)."""
    doc = (inspect.getdoc(cls) or "").partition("Args:")[2]
    # A meaning may go on over more-indented lines: all of it, never a line cut mid-sentence.
    entries = re.findall(r"^(\s+)(\w+): (.+(?:\n\1\s+\S.*)*)", doc, re.M)
    meanings = {name: " ".join(text.split()) for _, name, text in entries}
    return {p.name: (None if p.default is p.empty else p.default, meanings.get(p.name, ""))
            for p in inspect.signature(cls).parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def show(value):
    """`value` as one line of YAML (null, true, [1, 2]), as it is written in a config."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
