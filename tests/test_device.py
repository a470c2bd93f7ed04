"""processor/device.py: what a CUDA card runs fast (mocked cards), and compile afresh in every run."""
import pytest
import torch

import processor.device
from processor import configure
from processor.device import cuda_fast_path, device_note
from tests.test_evaluation import toy_dataset


def fake_card(monkeypatch, capability, triton=True, name="card"):
    """torch.cuda answering as one card of `capability`, with or without Triton installed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or capability >= (8, 0))
    monkeypatch.setattr(processor.device, "has_triton", lambda: triton)


@pytest.mark.parametrize("capability, triton, amp, compiles", [
    ((9, 0), True, "bf16", True),    # H100
    ((8, 6), False, "bf16", False),  # an RTX 30x0 without Triton
    ((7, 5), True, "fp16", True),    # T4: bf16 only emulated
    ((7, 0), True, "fp16", True),    # V100
    ((6, 1), True, "off", False),    # P40: no tensor cores, too old for Triton
])
def test_speed_fast_takes_what_the_card_runs_fast(monkeypatch, capability, triton, amp, compiles):
    fake_card(monkeypatch, capability, triton)
    assert cuda_fast_path("cuda") == (amp, compiles)
    for device in ("cuda", "auto", "cuda:0", 0):
        cfg = configure("pretrain", {"method": "skeletonclr", "speed": "fast", "device": device})[1]
        assert (cfg["amp"], cfg["compile"], cfg["tf32"]) == (amp, compiles, True)
    synced = configure("pretrain", {"method": "skeletonclr", "speed": "fast", "device": "cuda", "sync_bn": True})[1]
    assert synced["compile"] is False


def test_the_log_says_what_the_card_lacks(monkeypatch):
    fake_card(monkeypatch, (7, 5), name="Tesla T4")
    cuda = torch.device("cuda", 0)
    assert device_note(cuda, "fp16", True) == ("Tesla T4, compute capability 7.5: amp fp16, compile on; "
                                               "bf16 is emulated below compute capability 8.0; fp16 has tensor cores")
    slow = device_note(cuda, "bf16", False)  # bf16 asked for by name on a card that emulates it
    assert slow.startswith("warning: Tesla T4, compute capability 7.5: amp bf16, compile off")
    fake_card(monkeypatch, (6, 0), triton=False, name="P100")
    assert device_note(cuda, "off", True) == (
        "warning: P100, compute capability 6.0: amp off, compile on; bf16 is emulated below compute capability 8.0; "
        "fp16 has no tensor cores below 7.0; compile needs Triton (not installed) and 7.0+")
    fake_card(monkeypatch, (9, 0), name="H100")
    assert device_note(cuda, "bf16", True) == "H100, compute capability 9.0: amp bf16, compile on"
    assert device_note(torch.device("cpu"), "bf16", True) is None


def test_every_compiling_run_forgets_the_graphs_of_the_runs_before(tiny, tmp_path, monkeypatch):
    """A table or the demo runs many models in one process; all compiled encoders share Model.forward, whose
    cache holds 8 versions before torch runs it eager. Each compiling run now resets dynamo before it
    compiles (compilation stubbed out); a run without compile leaves it alone."""
    events = []
    monkeypatch.setattr(torch.compiler, "reset", lambda: events.append("reset"))
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: events.append(type(self).__name__))
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **k: fn)  # Model.compile's named passes
    data = toy_dataset(tmp_path)
    for run, compiled in enumerate((True, True, False)):
        cls, cfg = tiny("linear_evaluation", "unused", tmp_path / f"run{run}", train_feeder_args=data,
                        test_feeder_args=data, model_args=dict(num_class=2), compile=compiled)
        cls(cfg)
    cls, cfg = tiny("pretrain", "unused", tmp_path / "pretrain", train_feeder_args=data, test_feeder_args=data,
                    method="skeletonclr", compile=True)
    cls(cfg)
    assert events == ["reset", "STGCN", "reset", "STGCN", "reset", "STGCN", "STGCN"]  # pretraining: both encoders
