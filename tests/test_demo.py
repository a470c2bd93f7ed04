"""The README's main command, `python main.py demo`, at a reduced size, and the table it prints."""
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys

import pytest
import yaml

from processor.stats import mean_std
from processor.table import Table, slug
from torchlight.config import ConfigError

TINY = "model_args: {hidden_channels: 4, hidden_dim: 16"
REDUCED = ["--num_files", "90", "--frames", "16", "--progress", "false", "--label_fraction", "0.5",
           "--pretrain", "{num_steps: 1, batch_size: 16, " + TINY + ", queue_size: 64}}",
           "--linear", "{num_epoch: 2, batch_size: 16, eval_interval: 2, " + TINY + "}}"]
ROWS = ["raw joints", "random init", "SkeletonCLR", "SkeleMixCLR+"]


def test_demo_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "main.py", "demo", "--work_dir", str(tmp_path / "wd"),
                          "--data_dir", str(tmp_path / "data"), *REDUCED],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads((tmp_path / "wd" / "demo_result.json").read_text())["results"]
    assert [r["model"] for r in rows] == ROWS
    for r in rows:  # both protocols of every row, the baselines included
        for protocol in ("paper", "probe"):
            run = r["runs"][0][protocol]
            assert 0 <= r[protocol] == run["top1"] <= run["top5"] <= 100
    for r in rows:  # the printed table shows the same numbers, with loss/chance for pretrained rows only
        ratio = "-" if r["loss_over_chance"] is None else f"{r['loss_over_chance']:.3f}"
        assert f"{r['model']:<14}{r['paper']:>14.1f}{r['probe']:>14.1f}{ratio:>13}" in out.stdout
    assert [r["loss_over_chance"] is None for r in rows] == [True, True, False, False]
    for row in ROWS:
        work = tmp_path / "wd" / slug(row) / "seed1"
        assert (work / "linear" / "result.json").is_file() and (work / "probe" / "result.json").is_file()
        assert (work / "epoch1_model.pt").is_file() == (row in ROWS[2:])
    # linear evaluation sees half the training labels, pretraining every training clip without them
    linear = yaml.safe_load((tmp_path / "wd" / "skeletonclr" / "seed1" / "linear" / "config.yaml").read_text())
    pretrain = yaml.safe_load((tmp_path / "wd" / "skeletonclr" / "seed1" / "config.yaml").read_text())
    assert linear["train_feeder_args"]["label_fraction"] == 0.5 and not linear["feature_norm"]
    probe = yaml.safe_load((tmp_path / "wd" / "skeletonclr" / "seed1" / "probe" / "config.yaml").read_text())
    assert probe["feature_norm"] and probe["train_feeder_args"]["label_fraction"] == 0.5
    assert pretrain["train_feeder_args"].get("label_fraction") is None
    # the synthetic clips were generated where the demo was told to put its data
    [folder] = [p for p in (tmp_path / "data").iterdir() if p.is_dir()]
    assert folder.name.startswith("files90_seed1_nuisance0.5_timing0.0_frames")
    assert len(list((folder / "raw").iterdir())) == 90


def test_table_mean_and_spread_by_hand(tmp_path):
    assert mean_std([50.0, 60.0, 70.0]) == (60.0, 10.0) and mean_std([42.0]) == (42.0, 0.0)
    table = Table(dict(Table.default_config(), seeds=[1, 2, 3], work_dir=str(tmp_path)))
    text = table.format([dict(model="SkeletonCLR", paper=60.0, paper_std=10.0, probe=70.0, probe_std=1.25,
                              loss_over_chance=0.8123),
                         dict(model="raw joints", paper=55.25, paper_std=0.5, probe=64.0, probe_std=2.0,
                              loss_over_chance=None)])
    assert text.splitlines()[2:] == [f"{'SkeletonCLR':<14}{'60.0 ± 10.0':>14}{'70.0 ± 1.2':>14}{'0.812':>13}",
                                     f"{'raw joints':<14}{'55.2 ± 0.5':>14}{'64.0 ± 2.0':>14}{'-':>13}"]
    # a row name longer than the column widens it for every row, so the cells stay aligned
    text = table.format([dict(model="MAMP SkeleMixCLR+ long", paper=1.0, paper_std=0.0, probe=2.0, probe_std=0.0,
                              loss_over_chance=None), dict(model="A", paper=3.0, paper_std=0.0, probe=4.0,
                                                           probe_std=0.0, loss_over_chance=None)])
    header, first, second = text.splitlines()[1:]
    assert header.index("paper") == first.index("1.0 ± 0.0") + 4 == second.index("3.0 ± 0.0") + 4


def test_table_data_may_be_a_data_file(tmp_path):
    """`data: config/data/X.yaml`: the file's arrays (and layout) go to every run, named once for every table."""
    table = Table(dict(Table.default_config(), work_dir=str(tmp_path), data="config/data/ucla_xview_val_small.yaml"))
    assert table.cfg["data"]["train_feeder_args"]["data_path"] == "./data/ucla_frame32/xview_val/train_position.npy"
    assert table.cfg["data"]["layout"] == "kinect-v1"
    with pytest.raises(ConfigError, match="absent.yaml"):
        Table(dict(Table.default_config(), work_dir=str(tmp_path), data="config/data/absent.yaml"))


def test_table_compares_rows_seed_by_seed(tmp_path):
    """The paired interval pairs runs by seed, whatever their order; names outside the rows are refused."""
    def runs(paper):
        return [dict(seed=s, paper=dict(top1=v), probe=dict(top1=v + 1)) for s, v in paper.items()]
    rows = [dict(model="A", runs=runs({1: 80.0, 2: 78.0, 3: 79.0})),
            dict(model="B", runs=runs({3: 74.0, 1: 75.0, 2: 76.0}))]  # differences 5, 2, 5
    c = Table.compare(rows, "A", "B")
    half = 4.303 * statistics.stdev([5, 2, 5]) / 3 ** 0.5
    assert c["seeds"] == [1, 2, 3] and c["paper"]["difference"] == pytest.approx(4.0)
    assert (c["paper"]["low"], c["paper"]["high"]) == pytest.approx((4 - half, 4 + half))
    assert c["paper"]["verdict"] == "not significant" and c["probe"]["difference"] == pytest.approx(4.0)
    row = dict(name="A", linear=str(tmp_path / "x.yaml"))
    (tmp_path / "x.yaml").write_text("num_epoch: 1\n")
    with pytest.raises(ConfigError, match="compare \\['A', 'C'\\]"):
        Table(dict(Table.default_config(), rows=[row], compare=[["A", "C"]], work_dir=str(tmp_path)))


def test_table_reads_finished_rows_back_and_overwrite_redoes_them(tmp_path):
    """An interrupted table resumes: a row and seed with its result.json is not trained again."""
    finished = dict(loss_over_chance=0.5, paper=dict(top1=61.0, top5=90.0), probe=dict(top1=70.0, top5=95.0))
    (tmp_path / "skeletonclr" / "seed2").mkdir(parents=True)
    (tmp_path / "skeletonclr" / "seed2" / "result.json").write_text(json.dumps(finished))
    (tmp_path / "pre.yaml").write_text("method: skeletonclr\nnum_epoch: 0\n")  # would fail if run
    (tmp_path / "lin.yaml").write_text("num_epoch: 0\n")  # as would this
    row = dict(name="SkeletonCLR", linear=str(tmp_path / "lin.yaml"), pretrain=["pretrain", str(tmp_path / "pre.yaml")])
    table = Table(dict(Table.default_config(), seeds=[2], work_dir=str(tmp_path), rows=[row]))
    assert table.run_row(row, 2) == finished
    table.cfg["overwrite"] = True
    with pytest.raises(ConfigError):
        table.run_row(row, 2)


def test_rank0_decides_which_rows_a_table_skips(tmp_path, monkeypatch):
    """Under torchrun rank 0's disk decides whether a row and seed are finished, and its result travels: a
    rank on another node skips what rank 0 skips (its own disk lacks the file) and trains what rank 0 trains
    (its own disk holds a stale file). Here this process is rank 1 of 2 with a mocked broadcast."""
    import processor.table
    import torchlight.dist
    finished = dict(loss_over_chance=0.5, paper=dict(top1=61.0, top5=90.0), probe=dict(top1=70.0, top5=95.0))
    rank0 = {}  # what rank 0 broadcasts
    sent, trained = [], []

    def broadcast_object_list(box, src=0):
        sent.append((list(box), src))
        box[0] = rank0["result"]

    monkeypatch.setattr(torchlight.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torchlight.dist.dist, "broadcast_object_list", broadcast_object_list)
    monkeypatch.setattr(processor.table, "is_main_process", lambda: False)
    row = dict(name="SkeletonCLR", linear="unused")
    table = Table(dict(Table.default_config(), seeds=[2], work_dir=str(tmp_path)))
    monkeypatch.setattr(table, "train_row", lambda row, seed, work: trained.append(work) or {"top1": 1.0})
    rank0["result"] = finished  # rank 0 finished it; this node's disk has no result.json
    assert table.run_row(row, 2) == finished and not trained
    stale = tmp_path / "skeletonclr" / "seed2" / "result.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps(dict(finished, loss_over_chance=0.9)))
    rank0["result"] = None  # rank 0 redoes it (its disk has none): so does this rank, whatever its disk says
    result = table.run_row(row, 2)
    assert result["top1"] == 1.0 and result["seed"] == 2 and trained == [str(stale.parent)]  # trained here
    assert json.loads(stale.read_text())["loss_over_chance"] == 0.9  # only rank 0 writes the result
    assert sent == [([None], 0), ([None], 0)]  # rank 1 sends nothing of its own


def test_the_data_folder_is_keyed_by_every_setting_that_changes_the_data(tmp_path, monkeypatch):
    import processor.demo as demo
    roots = []
    monkeypatch.setattr(demo, "demo_arrays", lambda root, *args: roots.append(os.path.basename(root)))
    base = dict(demo.Demo.default_config(), work_dir=str(tmp_path / "wd"), data_dir=str(tmp_path / "data"))
    changes = [{}, dict(num_files=50), dict(seed=2), dict(nuisance=0.0), dict(timing=1.0), dict(frames=16)]
    for change in changes:
        demo.Demo(dict(base, **change)).prepare_data()
    assert roots[0] == "files1000_seed1_nuisance0.5_timing0.0_frames32" and len(set(roots)) == len(changes)


def test_table_reads_every_config_file_before_its_first_run(tmp_path):
    (tmp_path / "lin.yaml").write_text("num_epoch: 1\n")
    rows = [dict(name="raw joints", linear=str(tmp_path / "lin.yaml")),
            dict(name="SkeletonCLR", linear=str(tmp_path / "lin.yaml"), pretrain=["pretrain", "typo.yaml"])]
    with pytest.raises(ConfigError, match="config file not found: typo.yaml"):
        Table(dict(Table.default_config(), work_dir=str(tmp_path / "t"), rows=rows))
    assert not (tmp_path / "t").exists()  # nothing written


def test_a_typo_in_a_rows_linear_args_is_refused_before_any_training(tmp_path):
    """Before: found only when that row's linear evaluation started, after its pretraining."""
    (tmp_path / "lin.yaml").write_text("num_epoch: 1\n")
    (tmp_path / "pre.yaml").write_text("method: skeletonclr\nnum_epoch: 1\n")
    rows = [dict(name="SkeletonCLR", linear=str(tmp_path / "lin.yaml"),
                 pretrain=["pretrain", str(tmp_path / "pre.yaml")], linear_args=dict(train_feeder_args=dict(frmes=3)))]
    with pytest.raises(ConfigError, match="unknown key train_feeder_args.frmes"):
        Table(dict(Table.default_config(), work_dir=str(tmp_path / "t"), rows=rows))
    rows[0]["linear_args"] = dict(base_lr=-1, num_steps=3)
    with pytest.raises(ConfigError, match="unknown key 'num_steps'"):
        Table(dict(Table.default_config(), work_dir=str(tmp_path / "t"), rows=rows))
    assert not (tmp_path / "t").exists()


def test_a_killed_table_row_resumes(demo_arrays, tmp_path):
    """A row killed after its first pretraining epoch: the rerun resumes that checkpoint (before: refused until
    the folder was deleted by hand)."""
    tiny = "model_args: {hidden_channels: 4, hidden_dim: 16, queue_size: 32}\n"
    (tmp_path / "pre.yaml").write_text("method: skeletonclr\nbatch_size: 16\nsave_interval: 1\neval_interval: 0\n"
                                       "num_workers: 0\ntrain_feeder_args: {frames: 16}\n" + tiny)
    (tmp_path / "lin.yaml").write_text("num_epoch: 1\nbatch_size: 16\nnum_workers: 0\n")
    data = {part: dict(data_path=f"{demo_arrays}/{part}_position.npy", label_path=f"{demo_arrays}/{part}_label.pkl")
            for part in ("train", "test")}
    cfg = dict(Table.default_config(), work_dir=str(tmp_path / "t"), progress=False, device="cpu",
               data=dict(train_feeder_args=data["train"], test_feeder_args=dict(
                   data_path=f"{demo_arrays}/val_position.npy", label_path=f"{demo_arrays}/val_label.pkl")),
               rows=[dict(name="SkeletonCLR", linear=str(tmp_path / "lin.yaml"),
                          pretrain=["pretrain", str(tmp_path / "pre.yaml")])])
    Table(dict(cfg, pretrain=dict(num_epoch=2))).start()
    seed = tmp_path / "t" / "skeletonclr" / "seed1"
    for name in ("result.json", "pretrain.json", "linear", "probe", "epoch2_model.pt"):  # as if killed in epoch 2
        shutil.rmtree(seed / name) if (seed / name).is_dir() else os.remove(seed / name)
    [row] = Table(dict(cfg, pretrain=dict(num_epoch=2))).start()
    assert "resuming" in (tmp_path / "t" / "log.txt").read_text()
    assert (seed / "epoch2_model.pt").is_file() and row["runs"][0]["loss_over_chance"] is not None
    assert json.loads((seed / "pretrain.json").read_text())["weights"].endswith("epoch2_model.pt")


def test_a_small_demo_lowers_its_batches_to_its_clips(tmp_path):
    """Before: below ~250 files the demo stopped at its first linear evaluation (batch 16, 12 labelled clips)."""
    from processor.demo import Demo
    labels = [i % 12 for i in range(132)]
    with open(tmp_path / "train_label.pkl", "wb") as f:
        pickle.dump(([f"c{i}" for i in range(132)], labels), f)
    demo = Demo(dict(Demo.default_config(), work_dir=str(tmp_path / "wd"), num_files=200))
    pretrain, linear = demo.fitted_batches(str(tmp_path))
    assert pretrain == {} and linear == {"batch_size": 8}  # 132 clips fit 64; 12 labelled (1 a class): 8
    demo.cfg["linear"] = {"batch_size": 4}
    assert demo.fitted_batches(str(tmp_path))[1] == {"batch_size": 4}  # given: it stands
    demo.cfg.update(label_fraction=0.01, linear={})
    with pytest.raises(ConfigError, match="leaves 0 training clip\\(s\\): raise num_files or label_fraction"):
        demo.fitted_batches(str(tmp_path))
