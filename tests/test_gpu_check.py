"""The CPU dry run of tools/gpu_check.py: every check that a CPU can run passes, the CUDA-only ones SKIP."""
import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_dry_run_on_cpu(tmp_path):
    path = tmp_path / "gpu_check.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "tools/gpu_check.py", "--device", "cpu", "--quick", "--json", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    result = json.loads(path.read_text())
    status = {r["check"]: r["status"] for r in result["results"]}
    passed = ["grouped_bn[cpu]", *[f"fused_vs_separate[{amp}]" for amp in ("fp64", "fp32", "bf16", "fp16")],
              "step_vs_cpu[cpu vs cpu, fp32]", "resume_bit_exact[deterministic]", "compile[aot_eager, bf16]",
              "fast_pretrain", "torchrun[gloo]"]
    skipped = ["no_host_waits[fp32]", "no_host_waits[bf16+device_augment+bone]", "no_host_waits[gaussian mix]",
               "torchrun[nccl+sync_bn]", "fused_throughput"]
    assert status == {**dict.fromkeys(passed, "PASS"), **dict.fromkeys(skipped, "SKIP")}
    checks = {r["check"]: r for r in result["results"]}
    assert checks["fused_vs_separate[fp64]"]["encoder_q_calls"] == "1/4"
    assert float(checks["fused_vs_separate[fp64]"]["loss_rel"]) < 1e-9
    assert float(checks["fused_vs_separate[fp64]"]["bn_stats_err"]) < 1e-9  # BN running statistics compared
    assert float(checks["step_vs_cpu[cpu vs cpu, fp32]"]["loss_rel"]) == 0 and \
        checks["step_vs_cpu[cpu vs cpu, fp32]"]["loss"] > 1
    compiled = checks["compile[aot_eager, bf16]"]  # the kNN pass of the compile check runs (it needs val data)
    assert compiled["graphs"][0] == compiled["graphs"][1] > 0 and compiled["graph_breaks"] == 0
    assert compiled["knn_top1"] >= 0 and float(compiled["loss_rel"]) < 1e-6
    fast = checks["fast_pretrain"]  # speed fast on CPU: no compile; bf16 only where the CPU has native kernels
    assert fast["compile"] is False and fast["amp"] in ("bf16", "off") and fast["loss"] > 1
    assert checks["resume_bit_exact[deterministic]"]["tensors_differing"] == 0
    assert checks["torchrun[gloo]"]["ranks"] == 2 and checks["torchrun[gloo]"]["rc"] == 0
    assert all(r["why"] for r in result["results"] if r["status"] == "SKIP")
    assert "15 of 15 checks passed or skipped" in done.stdout


def test_gpu_check_fits_a_first_gpu_session():
    """On one GPU the subprocesses (speed fast, torchrun with and without sync_bn) get timeouts that fit the
    budget, and the budget leaves a minute of the 8 for the check running at its end."""
    from tools import gpu_check, gpu_check_runs
    cuda = [gpu_check_runs.TIMEOUTS[t] for t in ("fast_pretrain", "torchrun[nccl]", "torchrun[nccl+sync_bn]")]
    assert sum(cuda) <= gpu_check.BUDGET_SECONDS <= 7 * 60


def test_gpu_check_skips_what_would_start_after_its_budget(tmp_path, capsys):
    from tools import gpu_check
    path = tmp_path / "gpu_check.json"
    threads = torch.get_num_threads()  # the CPU dry run sets one thread: this test process keeps its own
    try:
        assert gpu_check.main(["--device", "cpu", "--quick", "--budget", "0", "--only", "grouped_bn,torchrun",
                               "--json", str(path)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(path.read_text())["results"]
    assert [(r["check"], r["status"], r["why"]) for r in result] == [
        ("grouped_bn", "SKIP", "the budget of 0 s is spent"), ("torchrun", "SKIP", "the budget of 0 s is spent")]
