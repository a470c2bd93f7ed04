"""The CPU dry run of tools/gpu_check.py: every check that a CPU can run passes, the CUDA-only ones SKIP."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_dry_run_on_cpu(tmp_path):
    path = tmp_path / "gpu_check.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "tools/gpu_check.py", "--device", "cpu", "--quick", "--json", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    result = json.loads(path.read_text())
    status = {r["check"]: r["status"] for r in result["results"]}
    passed = ["grouped_bn[cpu]", *[f"fused_vs_separate[{amp}]" for amp in ("fp64", "fp32", "bf16", "fp16")],
              "resume_bit_exact[deterministic]", "torchrun[gloo]"]
    skipped = ["no_host_waits[fp32]", "no_host_waits[bf16+device_augment+bone]", "no_host_waits[gaussian mix]",
               "compile", "torchrun[nccl+sync_bn]", "fused_throughput"]
    assert status == {**dict.fromkeys(passed, "PASS"), **dict.fromkeys(skipped, "SKIP")}
    checks = {r["check"]: r for r in result["results"]}
    assert checks["fused_vs_separate[fp64]"]["encoder_q_calls"] == "1/4"
    assert float(checks["fused_vs_separate[fp64]"]["loss_rel"]) < 1e-9
    assert checks["resume_bit_exact[deterministic]"]["tensors_differing"] == 0
    assert checks["torchrun[gloo]"]["ranks"] == 2 and checks["torchrun[gloo]"]["rc"] == 0
    assert all(r["why"] for r in result["results"] if r["status"] == "SKIP")
    assert "13 of 13 checks passed or skipped" in done.stdout
