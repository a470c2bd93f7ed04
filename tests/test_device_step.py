"""What a GPU step costs beyond its arithmetic, counted on CPU: the step runs on PyTorch's `meta` device
(shapes without data: reading a value there is impossible, and every host-to-device copy is visible as
a cpu -> meta copy), and the ops it dispatches are counted (net/, feeder/, processor/)."""
import contextlib

import pytest
import torch
from flat import moco
from torch.utils._python_dispatch import TorchDispatchMode

from feeder.augment import augment_batch
from feeder.streams import to_stream
from net.st_gcn import Block
from net.st_gcn_fast import block_forward
from processor import configure
from tools import benchmark

MOCO = dict(hidden_channels=4, hidden_dim=16, dropout=0.5, feature_dim=8, queue_size=16, head="mlp_bn",
            temperature=0.2, swap_params=[[2, 3, 7, 11, 3, 1.0]])  # SkeleMixCLR+


class Ops(TorchDispatchMode):
    """Counts every aten op; records host-to-`meta` copies (shape, non_blocking) and value reads."""

    def __init__(self):
        super().__init__()
        self.count, self.copies, self.reads = {}, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = func.overloadpacket
        self.count[op] = self.count.get(op, 0) + 1
        if op is torch.ops.aten._to_copy and args[0].device.type == "cpu" and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]).type == "meta":
            self.copies.append((tuple(args[0].shape), kwargs.get("non_blocking", False)))
        if op is torch.ops.aten.copy_ and args[1].device.type == "cpu" and args[0].device.type == "meta":
            self.copies.append((tuple(args[1].shape), kwargs.get("non_blocking", False)))
        if op is torch.ops.aten._local_scalar_dense:
            self.reads.append((args[0].device.type, args[0].dtype))
        return func(*args, **kwargs)


def test_skelemixclr_plus_step_on_a_device_never_waits_for_it(monkeypatch):
    """Device augmentation, bone stream, 3 SkeleMix passes, 7 InfoNCE losses, backward, EMA and enqueue:
    no value is read from the device and the only host-to-device copies are each view's augmentation
    draws (frame indices and shear matrices), asynchronous."""
    torch.manual_seed(0)
    model = moco(**MOCO).to("meta").train()
    generator = torch.Generator().manual_seed(0)
    x = torch.empty(4, 3, 16, 25, 2, device="meta")
    model([to_stream(x, "bone")] * 2, generator=generator)  # the first step builds the per-device index caches
    built = []  # torch.tensor(data, device=...) copies without dispatching a copy op: watched separately
    for name in ("tensor", "as_tensor"):
        def watched(data, *args, _make=getattr(torch, name), **kwargs):
            device = torch.device(kwargs.get("device") or "cpu")
            if device.type != "cpu" and not (torch.is_tensor(data) and data.device == device):
                built.append(kwargs["device"])
            return _make(data, *args, **kwargs)
        monkeypatch.setattr(torch, name, watched)
    with Ops() as ops:
        views = [to_stream(augment_batch(x, generator), "bone") for _ in range(2)]
        losses = model(views, generator=generator)
        losses["loss"].backward()
    assert ops.copies == [((4, 16), True), ((4, 3, 3), True)] * 2 and built == []
    assert [read for read in ops.reads if read[0] == "meta"] == []
    assert model.ptr == 8 and losses["loss"].shape == ()
    # Dropout is F.dropout off the CPU (CUDA's fused kernel; meta decomposes it into a Bernoulli draw):
    # 9 dropout blocks x 5 encoder passes (query, 3 mixes, key).
    assert ops.count[torch.ops.aten.bernoulli_] == 9 * 5
    assert torch.ops.aten.embedding not in ops.count


def test_cpu_dropout_keeps_the_byte_mask():
    block = Block(4, 4, 3, dropout=0.5).train()
    with Ops() as ops:
        block_forward(block, torch.randn(25, 2, 8, 1, 4), torch.rand(3, 25, 25))
    assert ops.count[torch.ops.aten.embedding] == 1 and torch.ops.aten.native_dropout not in ops.count


def test_ema_update_is_two_multi_tensor_ops():
    model = moco(**MOCO)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    expected = [0.999 * k + 0.001 * q for q, k in zip(model.encoder_q.parameters(), model.encoder_k.parameters())]
    with Ops() as ops:
        model._momentum_update_key_encoder(0.999)
    assert ops.count[torch.ops.aten._foreach_mul_] == ops.count[torch.ops.aten._foreach_add_] == 1
    assert torch.ops.aten.mul_ not in ops.count and torch.ops.aten.add_ not in ops.count
    for k, e in zip(model.encoder_k.parameters(), expected):
        torch.testing.assert_close(k, e)


class QueueCasts(TorchDispatchMode):
    """Counts casts (autocast's included) of tensors of the queue's shape."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.casts = tuple(shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten._to_copy and tuple(args[0].shape) == self.shape:
            self.casts += 1
        return func(*args, **(kwargs or {}))


def test_queue_is_cast_once_per_step_under_autocast():
    """7 InfoNCE products with the queue (1 instance + 3 mixes x 2), one bf16 copy of it."""
    torch.manual_seed(0)
    model = moco(**dict(MOCO, dropout=0.0, queue_size=32)).train()  # (8, 32): no weight has that shape
    x = torch.randn(4, 3, 16, 25, 2)
    with QueueCasts(model.queue.shape) as counter, torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([x, x], generator=torch.Generator().manual_seed(0))
    assert counter.casts == 1 and torch.isfinite(losses["loss"])


@pytest.mark.parametrize("method", ["pretrain_skeletonclr_multi_swapv2", "linear_evaluation"])
def test_training_epoch_reads_the_losses_once(tmp_path, method):
    """Losses are summed on the device: an epoch of 4 steps reads no float value per step."""
    data = benchmark.write_dataset(str(tmp_path), 16, 16)
    cls, cfg = configure(method, dict(work_dir=str(tmp_path / "w"), batch_size=4, num_workers=0, progress=False,
                                      eval_interval=0, train_feeder_args=dict(data, frames=16), test_feeder_args=data,
                                      model_args=dict(hidden_channels=4, hidden_dim=16)))
    if method == "linear_evaluation":
        cfg["cache_features"] = False  # the encoder runs every step
    else:
        cfg["model_args"]["queue_size"] = 16
    proc = cls(cfg)
    with Ops() as ops:
        stats = proc.train_epoch(0)
    assert [r for r in ops.reads if r[1].is_floating_point] == []
    assert stats["train/loss"] > 0


def test_evaluation_copies_labels_without_waiting():
    """encode_batches sends each batch's labels and indices to the device asynchronously (the loader pins
    them on CUDA); on CPU its outputs, labels and indices are as computed by hand."""
    from flat import classifier

    from processor.features import encode_batches
    torch.manual_seed(0)
    encoder = classifier(hidden_channels=4, hidden_dim=16, num_class=3)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 3, 16, 25, 2, generator=g), torch.randint(3, (n,), generator=g),
                torch.arange(n) + 10 * i) for i, n in enumerate((4, 2))]
    outputs, labels, indices = encode_batches(encoder, batches, lambda x: x, contextlib.nullcontext, pooled=True)
    encoder.eval()
    with torch.no_grad():
        expected = torch.cat([encoder(x, return_features=True) for x, _, _ in batches])
    torch.testing.assert_close(outputs, expected, rtol=0, atol=0)
    assert labels.tolist() == torch.cat([y for _, y, _ in batches]).tolist()
    assert indices.tolist() == [0, 1, 2, 3, 10, 11]
    meta = classifier(hidden_channels=4, hidden_dim=16, num_class=3).to("meta")
    with Ops() as ops:
        encode_batches(meta, batches, lambda x: x.to("meta", non_blocking=True), contextlib.nullcontext, pooled=True)
    assert ops.copies == [((4, 3, 16, 25, 2), True), ((4,), True), ((4,), True),
                          ((2, 3, 16, 25, 2), True), ((2,), True), ((2,), True)]
