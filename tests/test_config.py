"""Config merging and the command line (torchlight.config, main.py)."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

import main
from net.methods import SUBCOMMANDS
from processor import configure
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
        if command and command.group(1) in SUBCOMMANDS:
            assert load_yaml(path)["method"] == SUBCOMMANDS[command.group(1)], path
    release = "config/CrosSCLR/skelemixclr_multi_swap_ntu.yaml"
    assert os.path.realpath(release) == os.path.realpath("config/CrosSCLR/skelemixclr_multi_swap_ntu60_xview.yaml")
    assert "xview" in load_yaml(release)["train_feeder_args"]["data_path"]


def test_base_inheritance_merges_nested_keys_and_refuses_a_circle(tmp_path):
    from torchlight.config import load_yaml
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "method.yaml").write_text("num_epoch: 80\nmodel_args: {hidden_channels: 8, dropout: 0.0}\n")
    (tmp_path / "data.yaml").write_text("train_feeder_args: {data_path: a.npy}\nmodel_args: {num_class: 10}\n")
    (tmp_path / "run.yaml").write_text("_base_: [recipe/method.yaml, data.yaml]\nmodel_args: {dropout: 0.1}\n")
    assert load_yaml(str(tmp_path / "run.yaml")) == dict(
        num_epoch=80, model_args=dict(hidden_channels=8, dropout=0.1, num_class=10),
        train_feeder_args=dict(data_path="a.npy"))
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_yaml(str(tmp_path / "loop.yaml"))
    (tmp_path / "bad.yaml").write_text("_base_: 3\n")
    with pytest.raises(ConfigError, match="_base_ in .*bad.yaml"):
        load_yaml(str(tmp_path / "bad.yaml"))


def written_checkpoints(cfg):
    """The epochs whose checkpoint a pretraining config writes: every save_interval-th and the last."""
    if cfg.get("num_steps"):  # epochs derived from the data: the last one, whatever its number
        return range(1, 10_000)
    epochs, every = cfg.get("num_epoch", 300), cfg.get("save_interval", 5)
    return {e for e in range(1, epochs + 1) if e % every == 0 or e == epochs}


def test_every_checkpoint_a_config_names_is_one_its_pretraining_writes():
    """Comments and `weights` keys alike: a path `<run>/epochN_model.pt` names a run some pretraining config
    writes to, and an epoch that run saves (a stale epoch40 after the run moved to 80 epochs fails here)."""
    runs = {}
    paths = glob.glob("config/**/*.yaml", recursive=True)
    for path in paths:
        cfg = load_yaml(path)
        if "method" in cfg and "work_dir" in cfg:  # config/small/: recipes, not runs
            runs[os.path.normpath(cfg["work_dir"])] = written_checkpoints(cfg)
    named = 0
    for path in paths:
        for run, epoch in re.findall(r"(\./work_dir/\S+?)/epoch(\d+)_model\.pt", open(path).read()):
            assert int(epoch) in runs.get(os.path.normpath(run), ()), f"{path}: {run}/epoch{epoch}_model.pt"
            named += 1
    assert named > 100


EVALUATIONS = {"linear_eval": "linear_evaluation", "finetune": "finetune_evaluation", "semi": "finetune_evaluation",
               "knn": "knn_evaluation"}  # config file prefix -> processor


def test_evaluations_are_filed_beside_their_weights_each_in_its_own_folder():
    """Evaluation configs name no work_dir: the results go beside the weights (`<run>/linear`), a baseline
    without weights under its data and model. Only configs evaluating weights a second way keep one:
    the release's recipes and the transfers to another dataset."""
    folders = {}
    for path in sorted(glob.glob("config/**/*.yaml", recursive=True)):
        name = next((p for prefix, p in EVALUATIONS.items() if os.path.basename(path).startswith(prefix)), None)
        if name is None or os.path.islink(path):  # links: the release's names of other files
            continue
        cls, cfg = configure(name, load_yaml(path), source=path)
        assert (cfg["work_dir"] is not None) == (path.endswith("_release.yaml") or "/transfer/" in path), path
        folder = os.path.abspath(cfg["work_dir"] or cls.default_work_dir(cfg))
        assert folder not in folders, f"{path} and {folders.get(folder)} both write {folder}"
        folders[folder] = path
    assert len(folders) > 90 and "config/ucla/knn_eval_ucla_xview_small.yaml" in folders.values()


def test_help_lists_every_key_with_its_default_and_meaning(capsys):
    main.main(["linear_evaluation", "--help"])
    out = capsys.readouterr().out
    for line in ("  base_lr = 3.0", "  weights = null", "  num_epoch = 150", "  step = [80]",
                 "  encoder.hidden_dim = 256", "  train_feeder_args.window_size = null"):
        assert line + "\n" in out
    # a meaning over several docstring lines is shown whole (before: cut after "The small-data recipe keeps")
    assert "bodies = null\n      keep the first this many bodies (M) of every clip; none: all. The small-data " \
           "recipe keeps one: a one-person clip's" in out and "one body halves the encoder's work\n" in out
    cls, _ = configure("linear_evaluation")
    assert all(f"\n  {key} = " in out for key in cls.default_config())
    main.main(["pretrain_skeletonclr_multi_swapv2", "--help"])
    out = capsys.readouterr().out  # the method's preset, MoCo's and the encoder's arguments
    for line in ("  model_args.swap_params = [[2, 3, 7, 11, 3, 1.0]]", "  model_args.temperature = 0.2",
                 "  model_args.queue_size = 32768", "  model_args.momentum = 0.999", "  encoder.dropout = 0.5"):
        assert line + "\n" in out


@pytest.mark.parametrize("name", [n for n in main.PROCESSORS if n not in SUBCOMMANDS])
def test_every_key_and_argument_has_a_meaning(name, capsys):
    main.main([name, "--help"])  # `pretrain` without a method too
    lines = capsys.readouterr().out.splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"  \S+ = ", line)]
    assert len(keys) >= 9
    assert all(lines[i + 1].startswith("      ") and lines[i + 1].strip() for i in keys), name


def test_no_arguments_list_the_processors_and_help_exits_0(capsys, tmp_path):
    assert main.main([]) is None
    assert "processors: pretrain, " in capsys.readouterr().out
    done = subprocess.run([sys.executable, os.path.abspath("main.py"), "knn_evaluation", "--help"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "  knn_k = [10, 20, 40]\n" in done.stdout and not os.listdir(tmp_path)


def test_print_config_prints_the_merged_config_and_creates_nothing(capsys, tmp_path, monkeypatch):
    path = os.path.abspath("config/ucla/linear_eval_ucla_xview_small.yaml")
    monkeypatch.chdir(tmp_path)
    main.main(["linear_evaluation", "--config", path, "--base_lr", "0.5", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    _, cfg = configure("linear_evaluation", load_yaml(path), {"base_lr": 0.5})
    assert printed == dict(cfg, work_dir="work_dir/ucla_frame32_xview/random_init/linear")
    assert not os.listdir(tmp_path)


def test_speed_fast_sets_the_gpu_speed_keys_unless_named(monkeypatch):
    """speed: fast on a GPU: bf16, TF32, device augmentation, min(8, CPUs) workers, compile; keys named in
    the config or on the command line keep their values; speed: exact changes nothing."""
    import torchlight.util
    from tests.test_device import fake_card
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    fake_card(monkeypatch, (8, 0))  # an A100 with Triton (tests/test_device.py: other cards)
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
    monkeypatch.setattr(torchlight.util, "cpu_amp_is_fast", lambda amp: False)
    cpu = configure("linear_evaluation", {"speed": "fast", "device": "cpu"})[1]
    assert (cpu["amp"], cpu["compile"], cpu["tf32"]) == ("off", False, True)  # no slow bf16, no compile on CPU
    with pytest.raises(ConfigError, match="speed must be exact or fast, not 'quick'"):
        configure("pretrain", {"method": "skeletonclr", "speed": "quick"})


def test_each_dataset_path_is_written_in_at_most_three_config_files():
    """A benchmark's arrays are named once, in its data file (config/data/), which experiments name as
    `_base_`: moving the data means editing one file, not twenty-seven."""
    files = {}
    for path in glob.glob("config/**/*.yaml", recursive=True):
        if os.path.islink(path):  # the release's names of other files
            continue
        for value in re.findall(r"^\s*(?:data_path|label_path):\s*(\S+)", open(path).read(), re.MULTILINE):
            files.setdefault(value, set()).add(path)
    assert len(files) >= 40
    assert {value: sorted(paths) for value, paths in files.items() if len(paths) > 3} == {}


def test_experiments_inherit_their_data_file_unchanged():
    """An experiment on NTU60 xsub reads the arrays of config/data/ntu60_xsub.yaml; a stream is a key."""
    data = load_yaml("config/data/ntu60_xsub.yaml")
    for path in ("config/CrosSCLR/skelemixclr_multi_swap_ntu60_xsub_bone.yaml",
                 "config/semi/semi1_skelemixclr_multi_swap_ntu60_xsub.yaml"):
        cfg = load_yaml(path)
        assert cfg["test_feeder_args"] == data["test_feeder_args"], path
        assert {k: cfg["train_feeder_args"][k] for k in data["train_feeder_args"]} == data["train_feeder_args"]
    assert load_yaml("config/CrosSCLR/skelemixclr_multi_swap_ntu60_xsub_bone.yaml")["stream"] == "bone"
    ucla = load_yaml("config/ucla/linear_eval_skeletonclr_ucla_xview.yaml")
    assert ucla["model_args"] == dict(num_class=10) and ucla["layout"] == "kinect-v1"
    assert ucla["train_feeder_args"]["layout"] == ucla["test_feeder_args"]["layout"] == "kinect-v1"


# --print_config before the encoder contract: the settings the paper fixes (model_args, optimisation, stream)
PAPER_SETTINGS = {
    ("pretrain", "config/CrosSCLR/skelemixclr_multi_swap_ntu60_xsub.yaml"): dict(
        model_args=dict(head="mlp_bn", temperature=0.2, swap_params=[[2, 3, 7, 11, 3, 1.0]]), batch_size=128,
        base_lr=0.1, num_epoch=300, step=[300], stream="joint", weight_decay=0.0001, momentum=0.9),
    ("pretrain", "config/CrosSCLR/skeletonclr_ntu120_xset.yaml"): dict(
        model_args=dict(head="mlp", temperature=0.07, swap_params=None), batch_size=128, base_lr=0.1,
        num_epoch=300, step=[300], stream="joint", weight_decay=0.0001, momentum=0.9),
    ("pretrain", "config/CrosSCLR/skelemixclr_swap_ntu60_xview.yaml"): dict(
        model_args=dict(head="mlp_bn", temperature=0.2, swap_params=[[2, 3, 7, 11, 1, 1.0]]), batch_size=128,
        base_lr=0.1, num_epoch=300, step=[300], stream="joint", weight_decay=0.0001, momentum=0.9),
    ("linear_evaluation", "config/linear_eval/linear_eval_skelemixclr_multi_swap_ntu60_xsub.yaml"): dict(
        model_args=dict(num_class=60), batch_size=128, base_lr=3.0, num_epoch=150, step=[80], stream="joint",
        weight_decay=0.0, momentum=0.9),
}


@pytest.mark.parametrize("name, path", PAPER_SETTINGS)
def test_ntu_configs_print_the_papers_settings_as_before(name, path, capsys):
    """The nested configuration changes no setting the paper fixes: the values --print_config gave before it,
    and the paper's encoder (ST-GCN at its default width, NTU layout) where the config names none."""
    main.main([name, "--config", path, "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert {k: cfg[k] for k in PAPER_SETTINGS[name, path]} == PAPER_SETTINGS[name, path]
    assert cfg["encoder"] == {} and cfg["layout"] is None


def test_every_ntu_config_keeps_the_default_encoder_and_layout():
    """Except the configs named after another encoder (`_ctrgcn_`, `_mamp_`), which set `encoder:` alone."""
    for path in glob.glob("config/*/*.yaml"):
        config = load_yaml(path)
        if "ntu" in os.path.basename(path) and "table" not in path:
            other = next((name for name in OTHER_ENCODERS if f"_{name}_" in os.path.basename(path)), None)
            assert ("encoder" not in config or config["encoder"]["name"] == other) and "layout" not in config, path


# The configs on another encoder, each in its official NTU-60 shape: the state dict's keys and shapes of the
# official code (tests/data/*_official_keys.json, less the classifier / head) and the clip length.
OTHER_ENCODERS = {"ctrgcn": 64, "mamp": 120}


def official_shapes(name):
    keys = json.load(open(f"tests/data/{name}_official_keys.json"))
    keys = keys["linprobe"] if name == "mamp" else keys
    return {k: v for k, v in keys.items() if not k.startswith(("fc.", "head."))}


@pytest.mark.parametrize("path", sorted(p for p in glob.glob("config/*/*.yaml")
                                        if any(f"_{name}_" in p for name in OTHER_ENCODERS)))
def test_the_other_encoders_configs_print_and_build_the_official_shapes(path, capsys):
    from net.encoders import build_encoder
    name = "linear_evaluation" if "linear_eval" in path else "pretrain"
    main.main([name, "--config", path, "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    encoder = build_encoder(cfg["encoder"], cfg["layout"])
    frames = OTHER_ENCODERS[cfg["encoder"]["name"]]
    assert {k: list(v.shape) for k, v in encoder.state_dict().items()} == official_shapes(cfg["encoder"]["name"])
    assert cfg["train_feeder_args"].get("frames", 64) == frames and cfg["stream"] == "joint"
    assert encoder.eval()(torch.zeros(1, 3, frames, 25, 2)).shape[1:] == (2, 256, frames // 4, 25)


def test_the_releases_flat_form_is_read_as_the_nested_one(tmp_path):
    """model_args.base_encoder and ST-GCN's arguments beside MoCo's, graph_args.layout; on the command line too."""
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump(dict(model_args=dict(
        base_encoder="net.st_gcn.Model", in_channels=3, hidden_channels=16, hidden_dim=256, dropout=0.5,
        graph_args=dict(layout="kinect-v1", strategy="spatial"), queue_size=512, head="mlp_bn"))))
    _, cfg = configure("pretrain_skeletonclr", load_yaml(flat), {"model_args.kernels": "reference"}, str(flat))
    assert cfg["encoder"] == dict(name="st_gcn", in_channels=3, hidden_channels=16, hidden_dim=256, dropout=0.5,
                                  kernels="reference")
    assert cfg["layout"] == "kinect-v1" and cfg["model_args"]["queue_size"] == 512
    assert not {"base_encoder", "hidden_channels", "graph_args"} & set(cfg["model_args"])
    _, evaluation = configure("linear_evaluation", {"model": "net.st_gcn.Model", "model_args": {"hidden_dim": 64}})
    assert evaluation["model"] == "net.encoders.Classifier" and evaluation["encoder"] == {"hidden_dim": 64}
    with pytest.raises(ConfigError, match=r"model_args.hidden_dim 64 contradicts encoder.hidden_dim 32"):
        configure("linear_evaluation", {"encoder": {"hidden_dim": 32}, "model_args": {"hidden_dim": 64}})


def test_epochs_and_steps_cannot_both_be_given():
    """Before: --num_epoch under the small recipe (num_steps 1200) was ignored without a word."""
    config = load_yaml("config/small/skelemixclr.yaml")
    with pytest.raises(ConfigError, match="num_epoch 5 and num_steps 1200 are both given .*--num_steps null"):
        configure("pretrain", config, {"num_epoch": 5})
    _, cfg = configure("pretrain", config, {"num_epoch": 5, "num_steps": None})
    assert cfg["num_epoch"] == 5 and cfg["num_steps"] is None
    with pytest.raises(ConfigError, match="both given"):
        configure("pretrain", dict(config, num_epoch=3))


def test_a_base_named_twice_or_a_deep_chain_is_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("seed: 2\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    (tmp_path / "twice.yaml").write_text("_base_: [a.yaml, b.yaml]\n")
    with pytest.raises(ConfigError, match="a.yaml is a _base_ twice in one config"):
        load_yaml(str(tmp_path / "twice.yaml"))
    for i in range(12):  # f0 <- f1 <- ... <- f11
        (tmp_path / f"f{i}.yaml").write_text(f"_base_: f{i - 1}.yaml\n" if i else "seed: 3\n")
    assert load_yaml(str(tmp_path / "f8.yaml")) == {"seed": 3}
    with pytest.raises(ConfigError, match="_base_ chain deeper than 8 files"):
        load_yaml(str(tmp_path / "f11.yaml"))
    # Before: each file naming the next one twice made 2^n reads (a hang), now the second is refused.
    for i in range(30):
        (tmp_path / f"g{i}.yaml").write_text(f"_base_: [g{i - 1}.yaml, g{i - 1}.yaml]\n" if i else "seed: 4\n")
    with pytest.raises(ConfigError, match="_base_ twice|deeper than 8"):
        load_yaml(str(tmp_path / "g29.yaml"))


@pytest.mark.parametrize("key", ["train_feeder_args.frmes", "test_feeder_args.bodys", "model_args.hiden_dim",
                                 "encoder.hiden_dim", "model_args.layout"])
def test_print_config_refuses_unknown_nested_keys(key, capsys):
    with pytest.raises(SystemExit, match=f"^error: unknown key {key}: known are "):
        main.main(["pretrain", "--config", "config/small/skelemixclr.yaml", f"--{key}", "3", "--print_config"])
    assert capsys.readouterr().out == ""
    main.main(["pretrain", "--config", "config/small/skelemixclr.yaml", "--model_args.hidden_dim", "3",
               "--print_config"])
    assert "hidden_dim: 3" in capsys.readouterr().out


def test_small_recipe_sets_bodies_for_every_feeder():
    """Before: the kNN monitor's val clips kept both bodies while its bank had one."""
    for path in glob.glob("config/small/*.yaml") + glob.glob("config/ucla/*_small.yaml"):
        config = load_yaml(path)
        if "rows" in config:  # a table
            continue
        if "num_steps" in config:
            _, cfg = configure("pretrain", dict(config, method=config.get("method", "skeletonclr")), source=path)
        else:
            _, cfg = configure("linear_evaluation", config, source=path)
        assert cfg["train_feeder_args"]["bodies"] == cfg["test_feeder_args"]["bodies"] == 1, path


def test_ucla_semi_and_finetune_configs():
    _, semi = configure("finetune_evaluation", load_yaml("config/ucla/semi10_ucla_xview_small.yaml"))
    _, fine = configure("finetune_evaluation", load_yaml("config/ucla/finetune_ucla_xview_small.yaml"))
    for cfg in (semi, fine):
        assert cfg["model_args"]["num_class"] == 10 and cfg["layout"] == "kinect-v1"
        assert cfg["test_feeder_args"]["data_path"].endswith("xview/val_position.npy")
    assert semi["train_feeder_args"]["label_fraction"] == 0.1 and "label_fraction" not in fine["train_feeder_args"]
    assert fine["grad_clip"] == 5.0 and fine["num_epoch"] == 110


def test_nested_key_check_knows_the_encoder_and_layout_keys(capsys):
    """The encoder's own arguments (by `encoder.name`, through the registry) and the top-level layout pass;
    the pretraining factory's MoCo arguments are model_args'."""
    main.main(["pretrain", "--config", "config/small/skelemixclr.yaml", "--encoder.name", "st_gcn",
               "--encoder.hidden_dim", "8", "--layout", "kinect-v1", "--model_args.queue_size", "64", "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["encoder"]["hidden_dim"] == 8 and cfg["layout"] == "kinect-v1"
    with pytest.raises(ConfigError, match="unknown key encoder.layout: .*top-level"):
        configure("linear_evaluation", {"encoder": {"layout": "coco"}})
    with pytest.raises(ConfigError, match="not a class"):
        configure("linear_evaluation", {"encoder": {"name": "torchlight.io.write_yaml"}})
