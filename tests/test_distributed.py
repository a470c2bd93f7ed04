"""DDP on 2 CPU processes with Gloo (torchlight/dist.py, processor/, net/moco.py), against one process.

Each test spawns its ranks itself and gives them a hard time limit. torch's SyncBatchNorm runs on
GPUs only, so the "SyncBatchNorm" equivalence is checked with `GlobalBatchNorm` below, a stand-in
with the same statistics (sums over all ranks, gradient through the all-reduce) that exists only here.
"""
import json
import os
import pickle
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
import yaml
from conftest import tiny_run
from flat import moco
from torch.nn.parallel import DistributedDataParallel

from processor import configure
from processor.nonfinite import NonFiniteError
from torchlight.config import ConfigError
from torchlight.dist import concat_all_gather, get_rank, get_world_size, init_distributed
from torchlight.util import select_device

WORLD, B = 2, 4  # ranks, clips per rank
MOCO = dict(hidden_channels=4, hidden_dim=16, dropout=0.0, feature_dim=8, queue_size=4 * WORLD * B,
            momentum=0.9, head="mlp", temperature=0.07)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- harness ---------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as in the ranks: tiny models on 2 shared cores are far faster that way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank, port, fn, out, args):
    """One rank: torchrun's environment, the Gloo group via torchlight.dist, `fn`'s result saved to `out`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(1)
    assert init_distributed("cpu") and dist.get_backend() == "gloo"
    try:
        torch.save(fn(rank, *args), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(fn, out, *args, timeout=180):  # a hang guard, generous for a loaded machine
    """fn(rank, *args) on WORLD spawned processes; their results in rank order. Fails after `timeout` s."""
    ctx = mp.start_processes(_child, args=(free_port(), fn, str(out), args), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{fn.__name__} did not finish on {WORLD} ranks within {timeout} s")
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


class SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: every rank's output depends on every rank's input."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_over_ranks(x):
    return SumOverRanks.apply(x) if dist.is_initialized() else x


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the union of all ranks' batches (what SyncBatchNorm computes), differentiable."""

    def _check_input_dim(self, x):
        pass

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        dims, shape = [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * get_world_size()
        mean = sum_over_ranks(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = sum_over_ranks(centred.pow(2).sum(dims)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)
        return centred / (var.view(shape) + self.eps).sqrt() * self.weight.view(shape) + self.bias.view(shape)


def use_global_bn(module):
    """Replace every BatchNorm of `module` by a GlobalBatchNorm holding the same parameters and buffers."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            bn = GlobalBatchNorm(child.num_features, child.eps, child.momentum)
            bn.load_state_dict(child.state_dict())
            bn.requires_grad_(child.weight.requires_grad)  # the key encoder's stay frozen
            setattr(module, name, bn)
        else:
            use_global_bn(child)
    return module


def clips(n, seed):
    return torch.randn(n, 3, 16, 25, 2, generator=torch.Generator().manual_seed(seed))


# --- MoCo: gathered keys, identical queues, DDP step == one process with the global batch -----------
def moco_steps(rank, world, bn, steps=2):
    """`steps` SGD steps of SkeletonCLR on rank `rank`'s share of fixed global batches of world * B clips.

    In float64: at random initialisation (features nearly collinear, tau 0.07) train-mode BN over 8 clips
    turns fp32 summation-order noise into ~1e-4 weight differences, even between 1 and 2 threads of
    one process; in float64 DDP and one process agree to ~1e-14, so a real difference cannot hide.
    """
    torch.manual_seed(0)
    model = moco(**MOCO)
    if bn == "eval":
        # BN from running statistics (those of other clips): every clip's features independent of its batch.
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # running statistics = those of the one calibration batch
        with torch.no_grad():
            model.encoder_q(clips(4 * B, 99))
        model.encoder_k.load_state_dict(model.encoder_q.state_dict())
        model.eval()
    elif world > 1:
        use_global_bn(model)
    model.double()
    per_rank = WORLD * B // world
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    ddp = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                          weight_decay=1e-4)
    losses = []
    for step in range(steps):
        views = [clips(WORLD * B, 10 * step + 1)[mine].double(), clips(WORLD * B, 10 * step + 2)[mine].double()]
        loss = ddp(views)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return dict(losses=losses, state={k: v.clone() for k, v in model.state_dict().items()})


def ddp_moco_worker(rank):
    return {bn: moco_steps(rank, WORLD, bn) for bn in ("eval", "global")}


def test_global_batch_norm_stand_in_is_batch_norm():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.3)
    nn.init.normal_(bn.weight)
    x = torch.randn(5, 3, 4, 2)
    stand_in = use_global_bn(nn.Sequential(bn))[0]
    reference = bn(x)
    torch.testing.assert_close(stand_in(x), reference)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(stand_in, name), getattr(bn, name))


def test_ddp_moco_step_equals_one_process_with_the_global_batch(tmp_path):
    ranks = run_ranks(ddp_moco_worker, tmp_path)
    initial = moco_steps(0, 1, "eval", steps=0)["state"]
    for bn in ("eval", "global"):
        single = moco_steps(0, 1, bn)  # one process, global batch WORLD * B, torch's own BatchNorm
        a, b = (r[bn] for r in ranks)
        # The queue is identical on every rank and holds the keys of the whole global batch.
        assert torch.equal(a["state"]["queue"], b["state"]["queue"]) and int(a["state"]["queue_ptr"]) == 2 * WORLD * B
        # DDP averages the ranks' gradients of their mean losses: the one-process mean over 2B.
        for step, loss in enumerate(single["losses"]):
            assert np.isclose((a["losses"][step] + b["losses"][step]) / 2, loss, rtol=1e-5, atol=1e-6), (bn, step)
        # Same weights, EMA key encoder, BN statistics and queue (the gathered keys) as one process.
        for name, value in single["state"].items():
            for rank in (a, b):
                torch.testing.assert_close(rank["state"][name], value, rtol=1e-10, atol=1e-12,
                                           msg=lambda m, bn=bn, name=name: f"{bn} {name}: {m}")
        for name in ("encoder_q.fc.2.weight", "encoder_k.fc.2.weight"):  # the steps did move the weights
            assert (single["state"][name] - initial[name]).abs().max() > 1e-2, name


def shuffle_bn_worker(rank):
    torch.manual_seed(0)
    model = moco(**MOCO, shuffle_bn=True)
    x = clips(WORLD * B, 3)
    torch.manual_seed(7)  # rank 0's permutation is the one broadcast
    keys = model._keys(x[rank * B:(rank + 1) * B])
    gathered = concat_all_gather(keys)
    model._dequeue_and_enqueue(keys)
    return dict(keys=keys, gathered=gathered, queue=model.queue.clone(), rank=get_rank(), world=get_world_size())


def test_shuffle_bn_keys_and_gathered_queue(tmp_path):
    ranks = run_ranks(shuffle_bn_worker, tmp_path)
    torch.manual_seed(0)
    model = moco(**MOCO)
    x = clips(WORLD * B, 3)
    torch.manual_seed(7)
    perm = torch.randperm(WORLD * B)
    # Independently: rank r's key encoder sees clips perm[rB:(r+1)B] as its batch (train-mode BN).
    expected = torch.empty(WORLD * B, MOCO["feature_dim"])
    with torch.no_grad():
        for r in range(WORLD):
            chunk = perm[r * B:(r + 1) * B]
            expected[chunk] = F.normalize(model.encoder_k(x[chunk]), dim=1)
    for r, out in enumerate(ranks):
        assert (out["rank"], out["world"]) == (r, WORLD)
        torch.testing.assert_close(out["keys"], expected[r * B:(r + 1) * B])
        torch.testing.assert_close(out["gathered"], expected)  # concat_all_gather: rank order
        torch.testing.assert_close(out["queue"][:, :WORLD * B], expected.T)
        torch.testing.assert_close(out["queue"], ranks[0]["queue"], rtol=0, atol=0)


# --- processors under DDP --------------------------------------------------------------------------
def pretrain_worker(rank, data, root):
    """SkeleMixCLR+ for 2 epochs, then epoch 2 again resumed from rank 0's epoch-1 checkpoint."""
    def run(work, **extra):
        cls, cfg = configure("pretrain_skeletonclr_multi_swapv2", tiny_run(
            data, os.path.join(root, f"rank{rank}", work), device="cpu", num_epoch=2, save_interval=1,
            eval_interval=1, knn_k=[1, 5], model_args=dict(queue_size=32), **extra))
        proc = cls(cfg)
        start = proc.start_epoch
        proc.start()
        params = {k: v.detach().clone() for k, v in proc.raw_model.state_dict(keep_vars=True).items()
                  if isinstance(v, torch.nn.Parameter)}  # by the checkpoint's names
        stats = [{k: v for k, v in s.items() if not k.endswith("per_s")} for s in proc.stats]
        return dict(stats=stats, params=params, queue=proc.raw_model.queue.clone(), start_epoch=start,
                    sampler_epoch=proc.train_loader.sampler.epoch, ddp=type(proc.model).__name__,
                    broadcast=set(proc.model.named_module_buffers))

    straight = run("straight")
    dist.barrier()
    resumed = run("resumed", resume=os.path.join(root, "rank0", "straight", "epoch1_model.pt"))
    return dict(straight=straight, resumed=resumed)


def test_pretraining_on_two_ranks_writes_on_rank0_and_resumes_exactly(demo_arrays, tmp_path):
    ranks = run_ranks(pretrain_worker, tmp_path, demo_arrays, str(tmp_path))
    assert not os.path.exists(tmp_path / "rank1")  # rank 1 writes no log, config, TensorBoard or checkpoint
    straight = tmp_path / "rank0" / "straight"
    assert {"log.txt", "config.yaml", "tensorboard", "epoch1_model.pt", "epoch2_model.pt"} <= set(
        os.listdir(straight))
    log = (straight / "log.txt").read_text()
    assert log.count("2 process(es)") == 1 and log.count("epoch 2/2") == 1
    checkpoint = torch.load(straight / "epoch2_model.pt", weights_only=False)
    assert len(checkpoint["rng_per_rank"]) == WORLD
    for run in ("straight", "resumed"):
        a, b = (r[run] for r in ranks)
        assert a["ddp"] == "DistributedDataParallel" and a["sampler_epoch"] == b["sampler_epoch"] == 1
        # DDP re-sends the BatchNorm statistics every forward, not the queue (identical by construction).
        assert "encoder_q.encoder.data_bn.running_mean" in a["broadcast"]
        assert not {"queue", "queue_ptr"} & a["broadcast"]
        assert a["stats"] == b["stats"]  # logged means are over the global batch; kNN over the whole val set
        assert torch.equal(a["queue"], b["queue"])
        for name, value in a["params"].items():
            assert torch.equal(value, b["params"][name]), name
    for r in ranks:
        assert r["resumed"]["start_epoch"] == 1
        assert r["resumed"]["stats"] == r["straight"]["stats"][1:]  # every rank continues its own streams
        for name, value in r["straight"]["params"].items():
            assert torch.equal(value, r["resumed"]["params"][name]), name
    for name, value in ranks[0]["straight"]["params"].items():
        assert torch.equal(checkpoint["model"][name], value), name
    assert {"knn/top1_k1", "knn/top1_k5", "train/loss_mix"} <= set(ranks[0]["straight"]["stats"][0])


def odd_val_set(demo_arrays, folder, n=39):
    """The first `n` (odd) val clips of the demo arrays."""
    x = np.load(os.path.join(demo_arrays, "val_position.npy"))[:n]
    with open(os.path.join(demo_arrays, "val_label.pkl"), "rb") as f:
        names, labels = pickle.load(f)
    np.save(os.path.join(folder, "val39.npy"), x)
    with open(os.path.join(folder, "val39.pkl"), "wb") as f:
        pickle.dump((list(names[:n]), list(labels[:n])), f)
    return dict(data_path=os.path.join(folder, "val39.npy"), label_path=os.path.join(folder, "val39.pkl"))


def evaluation_worker(rank, data, val, root):
    """Linear evaluation (scores before training, then 2 epochs), kNN and 1 epoch of fine-tuning."""
    def make(name, work, **extra):
        cls, cfg = configure(name, tiny_run(data, os.path.join(root, f"rank{rank}", work), device="cpu",
                                            test_feeder_args=val, test_batch_size=8, **extra))
        return cls(cfg)

    linear = make("linear_evaluation", "linear", num_epoch=2, eval_interval=1)
    shard = list(linear.val_loader.sampler)
    before = linear.evaluate(-1)
    scores, labels = linear.last_scores.clone(), linear.last_labels.clone()
    linear.start()
    knn = make("knn_evaluation", "knn", knn_k=[1, 5]).start()
    finetune = make("finetune_evaluation", "finetune", num_epoch=1, eval_interval=1)
    finetune.start()
    return dict(shard=shard, before=before, scores=scores, labels=labels, history=linear.history[1:], knn=knn,
                finetune=finetune.history[-1], fc=linear.raw_model.fc.weight.detach().clone())


def test_evaluation_on_two_ranks_counts_every_val_clip_once(demo_arrays, tmp_path):
    val = odd_val_set(demo_arrays, tmp_path)
    ranks = run_ranks(evaluation_worker, tmp_path, demo_arrays, val, str(tmp_path))
    single = evaluation_worker(0, demo_arrays, val, str(tmp_path / "single"))  # one process
    with open(val["label_path"], "rb") as f:
        labels = torch.tensor(pickle.load(f)[1])
    # ShardSampler: rank r takes r, r + 2, ...: 20 + 19 clips, every one exactly once, no padding.
    assert ranks[0]["shard"] == list(range(0, 39, 2)) and ranks[1]["shard"] == list(range(1, 39, 2))
    for r in ranks:
        assert torch.equal(r["labels"], labels)  # gathered in dataset order
        torch.testing.assert_close(r["scores"], single["scores"], rtol=1e-4, atol=1e-5)
        assert r["before"] == single["before"] and r["knn"] == single["knn"]
        assert r["history"] == ranks[0]["history"] and r["finetune"] == ranks[0]["finetune"]
        assert torch.equal(r["fc"], ranks[0]["fc"])
    assert single["scores"].shape[0] == 39
    for work in ("linear", "knn", "finetune"):
        assert os.listdir(tmp_path / "rank0" / work)
    assert not os.path.exists(tmp_path / "rank1")
    assert (tmp_path / "rank0" / "knn" / "knn.json").is_file()
    assert (tmp_path / "rank0" / "linear" / "result.json").is_file()


# --- configuration errors and torchrun ------------------------------------------------------------
def errors_worker(rank, data, root):
    messages = {}
    for key, overrides in dict(batch=dict(batch_size=15), sync_bn=dict(sync_bn=True),
                               queue=dict(model_args=dict(queue_size=40))).items():
        cls, cfg = configure("pretrain_skeletonclr", tiny_run(data, os.path.join(root, key), device="cpu",
                                                              **overrides))
        try:
            cls(cfg)
        except ConfigError as e:
            messages[key] = str(e)
    return messages


def test_clear_errors_on_two_ranks(demo_arrays, tmp_path):
    ranks = run_ranks(errors_worker, tmp_path, demo_arrays, str(tmp_path))
    assert ranks[0] == ranks[1]
    assert "batch_size 15 is not divisible by the 2 ranks" in ranks[0]["batch"]
    assert "sync_bn needs CUDA" in ranks[0]["sync_bn"] and "shuffle_bn" in ranks[0]["sync_bn"]
    assert "queue_size 40 is not divisible by the global batch_size 16 (2 rank(s) x 8)" in ranks[0]["queue"]


def test_main_under_torchrun(demo_arrays, tmp_path):
    part = {p: [f"--{p}_feeder_args.data_path", f"{demo_arrays}/{p.replace('test', 'val')}_position.npy",
                f"--{p}_feeder_args.label_path", f"{demo_arrays}/{p.replace('test', 'val')}_label.pkl"]
            for p in ("train", "test")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
               "main.py", "pretrain_skeletonclr_swap", "--work_dir", str(tmp_path), "--device", "cpu",
               "--num_workers", "0", "--progress", "false", "--batch_size", "16", "--num_epoch", "1",
               "--eval_interval", "1", "--knn_k", "[1,5]", "--train_feeder_args.frames", "16",
               "--model_args.hidden_channels", "4", "--model_args.hidden_dim", "16", "--model_args.dropout", "0",
               "--model_args.queue_size", "32", "--model_args.shuffle_bn", "true", *part["train"], *part["test"]]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = (tmp_path / "log.txt").read_text()
    assert "Pretrain on cpu, 2 process(es)" in log and log.count("knn/top1_k5") == 1
    assert (tmp_path / "epoch1_model.pt").is_file()


def test_explicit_gpu_index_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with 2 GPUs, as torchrun sees it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for spec in ("cuda:1", 1):
        with pytest.raises(ConfigError, match=f"device {spec!r} under torchrun: every rank would use that GPU"):
            select_device(spec, distributed=True)
    assert select_device("cuda", distributed=True) == torch.device("cuda", 1)  # this rank's GPU
    assert select_device("cpu", distributed=True) == torch.device("cpu")
    assert select_device("cuda:1") == torch.device("cuda", 1)  # one process may pick any GPU


def knn_worker(rank, data, val, root):
    cls, cfg = configure("knn_evaluation", tiny_run(data, os.path.join(root, f"rank{rank}"), device="cpu",
                                                    test_feeder_args=val, knn_k=[1]))
    proc = cls(cfg)
    return dict(shard=list(proc.val_loader.sampler), accs=proc.start())


def test_a_rank_without_val_clips_takes_part_in_the_gather(demo_arrays, tmp_path):
    val = odd_val_set(demo_arrays, tmp_path, n=1)
    ranks = run_ranks(knn_worker, tmp_path, demo_arrays, val, str(tmp_path))
    single = knn_worker(0, demo_arrays, val, str(tmp_path / "single"))
    assert [r["shard"] for r in ranks] == [[0], []]
    assert ranks[0]["accs"] == ranks[1]["accs"] == single["accs"]


def test_a_failing_rank_brings_the_job_down(demo_arrays, tmp_path):
    """Rank 0 cannot write its first checkpoint: it exits with its error, and rank 1 does not wait for it.

    Two plain processes with torchrun's environment, no torchrun agent to stop the survivor: 50 epochs
    are far more than the time limit, so rank 1 ends only because rank 0 failed.
    """
    (tmp_path / "epoch1_model.pt").mkdir()  # only rank 0 writes, and cannot replace a folder
    command = [sys.executable, "main.py", "pretrain_skeletonclr", "--work_dir", str(tmp_path), "--device", "cpu",
               "--num_workers", "0", "--progress", "false", "--batch_size", "16", "--num_epoch", "50",
               "--save_interval", "1", "--eval_interval", "0", "--train_feeder_args.frames", "16",
               "--train_feeder_args.data_path", f"{demo_arrays}/train_position.npy",
               "--train_feeder_args.label_path", f"{demo_arrays}/train_label.pkl", "--model_args.hidden_channels",
               "4", "--model_args.hidden_dim", "16", "--model_args.queue_size", "32",
               "--overwrite", "true"]  # the folder named like a checkpoint would otherwise be refused first
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), WORLD_SIZE=str(WORLD))
    ranks = [subprocess.Popen(command, cwd=ROOT, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for r in range(WORLD)]
    try:
        errors = [p.communicate(timeout=90)[1] for p in ranks]
    finally:
        for p in ranks:
            p.kill()
    assert [p.returncode != 0 for p in ranks] == [True, True]
    # One line naming the checkpoint (an OSError is reported, not a traceback), after the abort notice.
    assert "error: [Errno 21] Is a directory" in errors[0] and "rank 0 failed: aborting its process group" in errors[0]
    assert "epoch 2/50" not in (tmp_path / "log.txt").read_text()


def test_table_under_torchrun(demo_arrays, tmp_path):
    """A pretrained row of `main.py table` on 2 ranks: rank 1's linear evaluation reads the weights rank 0
    wrote (a barrier ends every run), both ranks finish, rank 0 alone writes one table.json."""
    tiny = dict(num_epoch=1, batch_size=16, num_workers=0, eval_interval=0,
                model_args=dict(hidden_channels=4, hidden_dim=16, dropout=0.0))
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(dict(tiny, method="skeletonclr",
                                                           model_args=dict(tiny["model_args"], queue_size=32))))
    (tmp_path / "lin.yaml").write_text(yaml.safe_dump(tiny))
    part = {p: dict(data_path=f"{demo_arrays}/{p}_position.npy", label_path=f"{demo_arrays}/{p}_label.pkl")
            for p in ("train", "val")}
    table = dict(work_dir=str(tmp_path / "table"), device="cpu", progress=False,
                 data=dict(train_feeder_args=dict(part["train"], frames=16), test_feeder_args=part["val"]),
                 rows=[dict(name="SkeletonCLR", pretrain=["pretrain_skeletonclr", str(tmp_path / "pre.yaml")],
                            linear=str(tmp_path / "lin.yaml"))])
    (tmp_path / "table.yaml").write_text(yaml.safe_dump(table))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
               "main.py", "table", "--config", str(tmp_path / "table.yaml")]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("linear evaluation top-1 %, seed 1") == 1  # the table printed once, by rank 0
    assert sorted(os.listdir(tmp_path / "table")) == ["log.txt", "skeletonclr", "table.json"]
    rows = json.loads((tmp_path / "table" / "table.json").read_text())["results"]
    assert [r["model"] for r in rows] == ["SkeletonCLR"] and 0 <= rows[0]["paper"] <= 100
    assert (tmp_path / "table" / "skeletonclr" / "seed1" / "probe" / "result.json").is_file()


def nan_loss_worker(rank, data, root):
    """2 epochs of SkeletonCLR; rank 1's loss is NaN at epoch 2, step 2 (its gradient stays finite, so rank 0's
    own losses stay finite): the error each rank raises."""
    cls, cfg = configure("pretrain_skeletonclr", tiny_run(data, os.path.join(root, "run"), device="cpu", num_epoch=2,
                                                          save_interval=1, model_args=dict(queue_size=32)))
    proc = cls(cfg)
    train_step = proc.train_step

    def nan_on_rank1(inputs):
        losses = train_step(inputs)
        if rank == 1 and proc.epoch == 1 and proc.step_in_epoch == 1:  # it counts the steps already taken
            losses["loss"] = losses["loss"] + torch.tensor(float("nan"))
        return losses

    proc.train_step = nan_on_rank1
    try:
        proc.start()
    except NonFiniteError as e:
        return dict(error=str(e), epochs=len(proc.stats))
    return dict(error=None, epochs=len(proc.stats))


def test_a_non_finite_loss_on_one_rank_stops_every_rank_in_the_same_epoch(demo_arrays, tmp_path):
    ranks = run_ranks(nan_loss_worker, tmp_path, demo_arrays, str(tmp_path))
    for r in ranks:
        assert r["epochs"] == 1  # epoch 1 logged, epoch 2 stopped before its evaluation and checkpoint
        assert r["error"].startswith("loss nan at epoch 2, step 2 on rank 1: training stopped"), r["error"]
    assert "last checkpoint " + str(tmp_path / "run" / "epoch1_model.pt") in ranks[0]["error"]
    assert not (tmp_path / "run" / "epoch2_model.pt").exists()


def test_local_gpu_is_local_rank_only_when_visible(monkeypatch):
    """torchrun on one node: LOCAL_RANK is the GPU; SLURM-style, one GPU per process: device 0 of each."""
    import torchlight.dist
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)  # not started by torchrun
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    for count, expected in ((4, 1), (1, 0)):
        monkeypatch.setattr(torch.cuda, "device_count", lambda count=count: count)
        assert select_device("auto") == torch.device("cuda", expected)
        assert select_device("cuda", distributed=True) == torch.device("cuda", expected)
        chosen = []  # what init_distributed hands NCCL
        monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
        monkeypatch.setattr(torchlight.dist.dist, "init_process_group", lambda backend, c=chosen: c.append(backend))
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert init_distributed("auto") and chosen == [expected, "nccl"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ConfigError, match="LOCAL_RANK 3 but this process sees 2 GPUs"):
        select_device("auto")


def test_more_torchrun_ranks_than_gpus_is_one_line_on_every_rank(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU node put both ranks on cuda:0 and NCCL failed with its
    duplicate-GPU error; now every rank stops before NCCL starts, with one line."""
    import torchlight.dist
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    called = []
    monkeypatch.setattr(torch.cuda, "set_device", called.append)
    monkeypatch.setattr(torchlight.dist.dist, "init_process_group", lambda backend: called.append(backend))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        with pytest.raises(ConfigError) as info:
            init_distributed("auto")
        assert str(info.value) == ("2 ranks on this node (torchrun --nproc_per_node 2) but it has 1 visible GPU(s): "
                                   "start at most 1, one per GPU")
    assert called == []  # neither a GPU chosen nor NCCL started
    assert init_distributed("cpu") and called == ["gloo"]  # Gloo on CPU needs no GPU per rank
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one rank per node: the node's GPU
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert select_device("cuda", distributed=True) == torch.device("cuda", 0)


def test_broadcast_object_is_rank_0s(monkeypatch):
    import torchlight.dist
    from torchlight.dist import broadcast_object

    def refuse(box, src=0):
        raise AssertionError("one process: no collective")

    monkeypatch.setattr(torchlight.dist.dist, "broadcast_object_list", refuse)
    assert broadcast_object({"a": 1}) == {"a": 1}

    def from_rank0(box, src=0):
        box[0] = ("rank", src)

    monkeypatch.setattr(torchlight.dist.dist, "broadcast_object_list", from_rank0)
    monkeypatch.setattr(torchlight.dist, "get_world_size", lambda: 2)
    assert broadcast_object("mine") == ("rank", 0) and broadcast_object("mine", src=1) == ("rank", 1)
