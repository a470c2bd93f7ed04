"""Config merging and the command line (torchlight.config, main.py)."""
import glob
import os
import re

import pytest

import main
from processor import ALIASES, configure
from torchlight.config import ConfigError, load_yaml, merge, parse_overrides


def test_precedence_command_line_over_config_over_defaults():
    defaults = {"lr": 0.1, "model_args": {"a": 1, "b": 2}, "step": []}
    cfg = merge(defaults, {"lr": 0.2, "model_args": {"a": 5}}, {"model_args.b": 7, "step": [3, 4]})
    assert cfg == {"lr": 0.2, "model_args": {"a": 5, "b": 7}, "step": [3, 4]}
    assert defaults == {"lr": 0.1, "model_args": {"a": 1, "b": 2}, "step": []}  # untouched


def test_values_take_their_defaults_type():
    defaults = {"lr": 0.1, "amp": "off", "wd": 0.0, "epochs": 3, "weights": None}
    cfg = merge(defaults, {"lr": 3, "wd": "1e-4"}, {"amp": False, "weights": "w.pt"})
    assert cfg == {"lr": 3.0, "amp": "off", "wd": 1e-4, "epochs": 3, "weights": "w.pt"}
    assert type(cfg["lr"]) is float
    with pytest.raises(ConfigError, match="key 'epochs' in x.yaml: expected int like the default 3, got True"):
        merge(defaults, {"epochs": True}, {}, source="x.yaml")


def test_overrides_are_read_as_yaml():
    assert parse_overrides(["--lr", "0.5", "--step=[1,2]", "--flag", "--name", "x", "--n.m", "null"]) == {
        "lr": 0.5, "step": [1, 2], "flag": True, "name": "x", "n.m": None}


@pytest.mark.parametrize("argv, message", [
    (["pretrain_skeletonclr", "--no_such_key", "1"], "unknown key 'no_such_key' in command line"),
    (["pretrain_skeletonclr", "--config", "missing.yaml"], "config file not found: missing.yaml"),
    (["pretrain_skeletonclr", "--base_lr", "[1,"], "malformed value for --base_lr"),
    (["no_such_processor"], "unknown processor 'no_such_processor'"),
    (["pretrain_skeletonclr", "stray"], "expected --key value"),
    (["pretrain_skeletonclr", "--batch_size", "abc"],
     "key 'batch_size' in command line: expected int like the default 128, got 'abc'"),
    (["pretrain_skeletonclr", "--progress", "0"], "key 'progress' in command line: expected bool"),
    (["pretrain_skeletonclr", "--step", "80"], "key 'step' in command line: expected list like the default [300]"),
    (["pretrain_skeletonclr", "--model_args.temperature", "cold"], "key 'model_args.temperature' in command line"),
    (["pretrain_skeletonclr", "--device", "[0,1]"], "device [0, 1]: one process uses one device; run several GPUs "
                                                    "with torchrun"),
    (["pretrain_skeletonclr", "--device", "banana"], "device 'banana' (auto, cpu, cuda, cuda:1 or 1)"),
])
def test_bad_command_lines_give_one_line_errors(argv, message):
    with pytest.raises(SystemExit) as e:
        main.main(argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_key_in_config_file_names_file_and_key(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("work_dir: a\nbase_lrr: 0.1\n")
    with pytest.raises(SystemExit, match=f"unknown key 'base_lrr' in {path}"):
        main.main(["linear_evaluation", "--config", str(path)])
    path.write_text("work_dir: [a\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_yaml(path)


def test_method_presets():
    _, clr = configure("pretrain_skeletonclr")
    _, mix = configure("pretrain_skeletonclr_swap")
    _, plus = configure("pretrain_skeletonclr_multi_swapv2", {"model_args": {"temperature": 0.3}})
    assert clr["model_args"]["temperature"] == 0.07 and clr["model_args"]["head"] == "mlp"
    assert mix["model_args"]["swap_params"] == [[2, 3, 7, 11, 1, 1.0]]
    assert plus["model_args"]["swap_params"] == [[2, 3, 7, 11, 3, 1.0]]
    assert plus["model_args"]["temperature"] == 0.3 and plus["model_args"]["head"] == "mlp_bn"
    assert plus["base_lr"] == 0.1 and plus["batch_size"] == 128 and plus["num_epoch"] == 300
    _, lin = configure("linear_evaluation")
    assert (lin["base_lr"], lin["step"], lin["num_epoch"], lin["weight_decay"]) == (3.0, [80], 150, 0.0)


def test_config_names_its_method_and_aliases_check_it(tmp_path):
    path = tmp_path / "plus.yaml"
    path.write_text("method: skelemixclr_plus\nwork_dir: w\n")
    _, cfg = configure("pretrain", load_yaml(path), source=str(path))
    assert cfg["method"] == "skelemixclr_plus" and cfg["model_args"]["swap_params"] == [[2, 3, 7, 11, 3, 1.0]]
    _, same = configure("pretrain_skeletonclr_multi_swapv2", load_yaml(path), source=str(path))
    assert same == cfg
    _, clr = configure("pretrain_skeletonclr")  # an alias without a config's method trains its own
    assert clr["method"] == "skeletonclr" and clr["model_args"]["swap_params"] is None


@pytest.mark.parametrize("argv, message", [
    (["pretrain_skeletonclr", "--config", "{path}"],
     "pretrain_skeletonclr pretrains skeletonclr but {path} says method skelemixclr_plus: run `python main.py "
     "pretrain` or fix the config's method"),
    (["pretrain_skeletonclr_multi_swapv2", "--config", "{path}", "--method", "skelemixclr"],
     "pretrain_skeletonclr_multi_swapv2 pretrains skelemixclr_plus but {path} says method skelemixclr"),
    (["pretrain", "--config", "{path}", "--method", "mocov3"], "method 'mocov3' in {path} is unknown; known: "
                                                              "skeletonclr, skelemixclr, skelemixclr_plus"),
    (["pretrain"], "config names no method: set method to one of skeletonclr, skelemixclr, skelemixclr_plus"),
])
def test_method_mismatch_is_a_one_line_error(tmp_path, argv, message):
    path = tmp_path / "plus.yaml"
    path.write_text("method: skelemixclr_plus\nwork_dir: w\n")
    with pytest.raises(SystemExit) as e:
        main.main([a.format(path=path) for a in argv])
    assert message.format(path=path) in str(e.value) and "\n" not in str(e.value)


def test_every_pretraining_config_names_the_method_of_its_command():
    """The release's file names keep the release's meaning: `_ntu` is NTU60 xview (a link)."""
    for path in glob.glob("config/**/*.yaml", recursive=True):
        text = open(path).read()
        command = re.search(r"main\.py (pretrain\w*) ", text)
        if command and command.group(1) in ALIASES:
            assert load_yaml(path)["method"] == ALIASES[command.group(1)], path
    release = "config/CrosSCLR/skelemixclr_multi_swap_ntu.yaml"
    assert os.path.realpath(release) == os.path.realpath("config/CrosSCLR/skelemixclr_multi_swap_ntu60_xview.yaml")
    assert "xview" in load_yaml(release)["train_feeder_args"]["data_path"]


def test_speed_fast_sets_the_gpu_speed_keys_unless_named(monkeypatch):
    """speed: fast on a GPU: bf16, TF32, device augmentation, min(8, CPUs) workers, compile; keys named in
    the config or on the command line keep their values; speed: exact changes nothing."""
    import processor.processor
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    exact = configure("pretrain", {"method": "skeletonclr"})[1]
    fast = configure("pretrain", {"method": "skeletonclr"}, {"speed": "fast"})[1]
    assert {k: exact[k] for k in ("amp", "tf32", "device_augment", "num_workers", "compile")} == dict(
        amp="off", tf32=False, device_augment=False, num_workers=2, compile=False)
    assert {k: fast[k] for k in ("amp", "tf32", "device_augment", "num_workers", "compile")} == dict(
        amp="bf16", tf32=True, device_augment=True, num_workers=8, compile=True)
    named = configure("pretrain", {"method": "skeletonclr", "speed": "fast", "num_workers": 3},
                      {"amp": "off", "model_args.head": "mlp_bn"})[1]
    assert (named["amp"], named["num_workers"], named["tf32"]) == ("off", 3, True)
    synced = configure("pretrain", {"method": "skeletonclr", "speed": "fast", "sync_bn": True})[1]
    assert synced["compile"] is False  # SyncBatchNorm does not trace under compile
    monkeypatch.setattr(processor.processor, "cpu_amp_is_fast", lambda amp: False)
    cpu = configure("linear_evaluation", {"speed": "fast", "device": "cpu"})[1]
    assert (cpu["amp"], cpu["compile"], cpu["tf32"]) == ("off", False, True)  # no slow bf16, no compile on CPU
    with pytest.raises(ConfigError, match="speed must be exact or fast, not 'quick'"):
        configure("pretrain", {"method": "skeletonclr", "speed": "quick"})
