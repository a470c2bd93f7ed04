"""Speed options against the plain fp32 path, and the benchmark's JSON (the fast kernels against the readable
forward: tests/test_st_gcn.py::test_fast_kernels_equal_readable_forward)."""
import json
import os
import platform
import subprocess
import sys

import pytest
import torch
from flat import classifier

from net.st_gcn_fast import _keep_mask
from processor import configure
from tools import benchmark
from torchlight.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(hidden_channels=4, hidden_dim=16, dropout=0.0)


def tiny_encoder(**kwargs):
    torch.manual_seed(0)
    return classifier(**dict(TINY, num_class=6, **kwargs))


def clips(n=4, t=16, seed=1):
    return torch.randn(n, 3, t, 25, 2, generator=torch.Generator().manual_seed(seed))


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_dropout_mask_rate_scale_and_layout():
    y = torch.empty(25, 8, 32, 16).permute(0, 3, 1, 2)  # a channels-last view, like a BatchNorm output
    for p in (0.5, 0.2):
        mask = _keep_mask(y, p)
        assert mask.stride() == y.stride() and mask.dtype == y.dtype
        kept = mask != 0
        assert torch.all(mask[kept] == 1 / (1 - p))
        assert abs(kept.float().mean().item() - (1 - p)) < 0.01  # 102400 draws: 0.01 is > 6 sigma
    bits = torch.stack([_keep_mask(y, 0.5).flatten() for _ in range(2)])
    assert not torch.equal(bits[0], bits[1])
    model = classifier(**dict(TINY, dropout=0.5)).eval()
    torch.testing.assert_close(model(clips()), model(clips()))  # no dropout in eval mode


def pretrain_step(tmp_path, **option):
    """Loss and gradients of one SkeleMixCLR+ step of a tiny processor on a fixed batch."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = benchmark.write_dataset(str(tmp_path), 8, 16)
    cfg = dict(work_dir=str(tmp_path / "w"), batch_size=8, num_workers=0, progress=False, eval_interval=0,
               train_feeder_args=dict(data, frames=16), model_args=dict(TINY, queue_size=32), **option)
    cls, cfg = configure("pretrain_skeletonclr_multi_swapv2", cfg)
    proc = cls(cfg)
    inputs = proc.prepare(next(iter(proc.train_loader)))
    with proc.autocast():
        loss = proc.train_step(inputs)["loss"]
    loss.backward()  # unscaled: fp16's GradScaler only guards against under/overflow, not precision
    return loss.detach().float(), grads(proc.raw_model)


# Tolerances by precision: relative error of the loss, and least cosine between the whole gradient vectors.
# Against float64 at initialisation, fp32 reaches a cosine of 0.99999, fp16 autocast ~0.99 and bf16 autocast
# only ~0.9, in the release's design as in ours: BatchNorm's backward cancels most of the gradient signal,
# and bf16 keeps 8 bits of it.
TOLERANCES = {"bf16": (2e-2, 0.8), "fp16": (5e-3, 0.95), "channels_last": (1e-5, 0.99999)}


@pytest.fixture(scope="module")
def fp32_step(tmp_path_factory):
    return pretrain_step(tmp_path_factory.mktemp("fp32"))


@pytest.mark.parametrize("name, option", [("bf16", dict(amp="bf16")), ("fp16", dict(amp="fp16")),
                                          ("channels_last", dict(channels_last=True))])
def test_speed_option_matches_fp32(tmp_path, fp32_step, name, option):
    loss_ref, grads_ref = fp32_step
    loss, grads_opt = pretrain_step(tmp_path / name, **option)
    loss_tol, min_cosine = TOLERANCES[name]
    assert abs(loss - loss_ref) <= loss_tol * abs(loss_ref)
    assert sorted(grads_opt) == sorted(grads_ref)
    flat, flat_ref = (torch.cat([g[k].flatten() for k in grads_ref]) for g in (grads_opt, grads_ref))
    assert torch.isfinite(flat).all()
    assert torch.nn.functional.cosine_similarity(flat, flat_ref, dim=0) >= min_cosine
    assert 0.8 <= flat.norm() / flat_ref.norm() <= 1.25


def test_compiled_encoder_matches_eager():
    model = tiny_encoder().train()
    x = clips()
    model(x).square().sum().backward()
    g_ref, out_ref = grads(model), model(x).detach()
    model.zero_grad()
    model.compile(backend="aot_eager")  # the traced graph and its autograd; inductor's code is torch's
    out = model(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    for k, v in g_ref.items():
        torch.testing.assert_close(model.get_parameter(k).grad, v, rtol=1e-4, atol=1e-5)


def test_benchmark_quick_writes_json(tmp_path):
    path = tmp_path / "speed.json"
    benchmark.main(["--quick", "--json", str(path), "--workers", "0", "--options", "fp32,bf16,fused,combined"])
    result = json.loads(path.read_text())
    assert {"fp32", "baseline", "fused", "combined"} <= set(result["options"])
    assert result["matmul_gflops"]["fp32"] > 0
    assert result["fp32_fraction_of_matmul"] > 0 and result["speedup_vs_baseline"] > 0
    bf16 = result["options"].get("bf16")  # measured where this CPU has native bf16 kernels
    assert (result["bf16_fraction_of_matmul"] > 0) if bf16 else result["bf16_fraction_of_matmul"] is None
    fp32 = result["options"]["fp32"]
    assert result["fp32_fraction_of_matmul"] == pytest.approx(fp32["encoder_gflops"] / result["matmul_gflops"]["fp32"])
    assert result["host_memory_kept"] is (platform.libc_ver()[0] == "glibc")
    assert result["settings"]["width"] == 4 and result["settings"]["batch"] == 4
    for row in result["options"].values():
        for key in benchmark.FIGURES:
            assert row[key] > 0, key
        for key in ["encoder_gflops", *[f"pretrain_{m}" for m in benchmark.METHODS], "linear_eval", "inference"]:
            assert row["min"][key] <= row[key] <= row["max"][key], key
    assert result["options"]["fused"]["config"] == {"fused_queries": True}


def test_benchmark_forgets_compiled_graphs_before_each_compiled_model(tmp_path, monkeypatch):
    """Every compiled model shares Model.forward: without a dynamo reset between them torch stops compiling
    after recompile_limit (8) versions and later figures run eager. Compilation itself is stubbed out."""
    events = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: events.append("compile"))
    monkeypatch.setattr(torch._dynamo, "reset", lambda: events.append("reset"))
    path = tmp_path / "speed.json"
    benchmark.main(["--width", "4", "--hidden_dim", "16", "--batch", "4", "--frames", "16", "--iters", "1",
                    "--warmup", "0", "--workers", "0", "--matmul_size", "64", "--no-baseline", "--compile_all",
                    "--options", "compile", "--methods", "skeletonclr", "--json", str(path)])
    # the encoder figure, a pretraining processor (query and key encoders), the linear evaluation
    assert "".join(e[0] for e in events) == "rc" + "rcc" + "rc"
    assert json.loads(path.read_text())["compile_cache"] == dict(reset_before_each_compiled_model=True,
                                                                 recompile_limit=8)


def test_benchmark_defaults_and_width():
    """The headline at the paper's batch, 5 timed steps, one SkeleMixCLR+ row per option; --width scales."""
    args = benchmark.parse_args([])
    assert (args.batch, args.iters, args.methods, args.options) == (128, 5, ["skelemixclr_plus"], "fp32,bf16")
    assert args.model_args == dict(hidden_channels=16, hidden_dim=256)
    assert args.moco_args["queue_size"] == 32768  # MoCo's default (docs/method.md §3), a whole number of batches
    small = benchmark.parse_args(["--width", "8", "--batch", "48"])
    assert small.model_args == dict(hidden_channels=8, hidden_dim=64)
    assert small.moco_args["queue_size"] == 32736 and small.moco_args["queue_size"] % 48 == 0


@pytest.fixture
def restore_numerics():
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.deterministic) = flags[:4]
    torch.use_deterministic_algorithms(flags[4])


@pytest.mark.parametrize("keys, expected", [
    ({}, (False, False, True, False, False)),  # defaults: exact fp32, cuDNN benchmark
    (dict(tf32=True, cudnn_benchmark=False), (True, True, False, False, False)),
    (dict(deterministic=True), (False, False, False, True, True)),
])
def test_gpu_numerics_keys_set_the_torch_flags(tmp_path, restore_numerics, keys, expected):
    torch.backends.cudnn.allow_tf32 = True  # torch's own default
    cls, cfg = configure("pretrain_skeletonclr", dict(
        work_dir=str(tmp_path), num_workers=0, progress=False, eval_interval=0, model_args=dict(TINY, queue_size=32),
        batch_size=8, train_feeder_args=benchmark.write_dataset(str(tmp_path), 8, 16), **keys))
    cls(cfg)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled()) == expected


def test_sync_bn_with_compile_is_refused(tmp_path):
    cls, cfg = configure("pretrain_skeletonclr", dict(work_dir=str(tmp_path), sync_bn=True, compile=True))
    with pytest.raises(ConfigError, match="sync_bn and compile are both true: SyncBatchNorm does not trace"):
        cls(cfg)


def test_benchmark_on_cuda_measures_every_option():
    """Planned without a GPU: on CUDA nothing is skipped, TF32 is an option and compile gets every figure."""
    args = benchmark.parse_args([])
    options, skipped = benchmark.speed_options(torch.device("cuda"), quick=False)
    assert skipped == {}
    assert {"fp32", "tf32", "bf16", "fp16", "compile", "channels_last", "device_augment", "fused", "separate",
            "combined"} == set(options)
    assert options["tf32"] == {"tf32": True} and options["combined"]["compile"]
    assert not any(benchmark.encoder_only(option, args, torch.device("cuda")) for option in options.values())
    # On CPU as before: compile, when asked for, measures the encoder only unless --compile_all.
    assert benchmark.encoder_only({"compile": True}, args, torch.device("cpu"))
    assert "tf32" not in benchmark.speed_options(torch.device("cpu"), quick=False)[0]


RSS_AFTER_FREE = """
import os
import sys
import numpy as np
from torchlight.util import keep_freed_host_memory, release_freed_host_memory
kept = keep_freed_host_memory() if sys.argv[1] != "default" else None
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
block = np.ones(2 ** 25)  # 256 MiB, touched
before = rss_mb()
del block
if sys.argv[1] == "keep_then_trim":
    release_freed_host_memory()  # what a forked DataLoader worker does first
print(kept, before - rss_mb())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or platform.libc_ver()[0] != "glibc",
                    reason="glibc on Linux only")
def test_keep_freed_host_memory_keeps_a_freed_block_and_trim_gives_it_back():
    def released_mb(mode):
        out = subprocess.run([sys.executable, "-c", RSS_AFTER_FREE, mode], capture_output=True, text=True,
                             check=True, cwd=ROOT).stdout.split()
        return out[0], float(out[1])

    assert released_mb("default")[1] > 200  # glibc unmaps a 256 MiB block on free
    kept, released = released_mb("keep")
    assert kept == "True" and released < 10  # kept for the next step's activations
    assert released_mb("keep_then_trim")[1] > 200  # a DataLoader worker gives its parent's kept memory back
