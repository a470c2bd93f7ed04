"""The README's main command, `python main.py demo`, at a reduced size."""
import json
import subprocess
import sys

TINY = "model_args: {hidden_channels: 4, hidden_dim: 16"
REDUCED = ["--num_files", "90", "--frames", "16", "--progress", "false",
           "--pretrain", "{num_epoch: 1, batch_size: 16, " + TINY + ", queue_size: 64}}",
           "--linear", "{num_epoch: 2, batch_size: 16, eval_interval: 2, " + TINY + "}}"]


def test_demo_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "main.py", "demo", "--work_dir", str(tmp_path / "wd"),
                          "--data_dir", str(tmp_path / "data"), *REDUCED],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "wd" / "demo_result.json").read_text())
    rows = result["results"]
    assert [r["model"] for r in rows] == ["SkeleMixCLR+", "SkeletonCLR", "random init"]
    assert all(0 <= r["top1"] <= 100 and r["top1"] <= r["top5"] for r in rows)
    for r in rows:  # the printed table shows the same numbers
        assert f"{r['model']:<14}{r['top1']:>9.1f}" in out.stdout
    for work in ("skelemixclr_plus", "skeletonclr"):
        assert (tmp_path / "wd" / work / "epoch1_model.pt").is_file()
        assert (tmp_path / "wd" / work / "linear" / "result.json").is_file()
    # the synthetic clips were generated where the demo was told to put its data
    raw = tmp_path / "data" / "raw"
    assert len(list(raw.iterdir())) == 90
