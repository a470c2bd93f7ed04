"""torchlight/threads.py: the wait policy main.py sets before torch loads, and the thread count a CPU run takes."""
import os
import subprocess
import sys

import pytest
import torch

import torchlight.threads as threads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_of(parameters):
    return torch.nn.Linear(parameters, 1, bias=False)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_narrow_models_take_one_thread_wide_ones_every_core(monkeypatch):
    monkeypatch.setattr(threads, "USER_THREADS", None)
    assert threads.choose_threads("auto", model_of(threads.NARROW_PARAMETERS - 1)) == 1
    assert threads.choose_threads("auto", model_of(threads.NARROW_PARAMETERS)) == os.cpu_count()
    assert threads.choose_threads(3, model_of(10)) == 3  # the config's number wins
    lazy = torch.nn.Sequential(torch.nn.LazyLinear(10), torch.nn.Linear(10, 10))  # the raw-joint probe's kind
    assert threads.choose_threads("auto", lazy) == 1


def test_the_users_omp_num_threads_wins(monkeypatch, restore_threads):
    monkeypatch.setattr(threads, "USER_THREADS", "2")
    torch.set_num_threads(2)
    assert threads.choose_threads("auto", model_of(10)) == 2


@pytest.mark.parametrize("env, policy", [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")])
def test_main_sets_a_passive_wait_policy_unless_the_user_chose_one(env, policy):
    """In a fresh interpreter, as `python main.py` starts: the policy is in the environment before torch loads."""
    code = "import os, main; print(os.environ['OMP_WAIT_POLICY'])"
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == policy


def test_main_imports_no_torch_before_the_policy_is_set():
    code = ("import sys, builtins, os\n"
            "real = builtins.__import__\n"
            "def spy(name, *a, **k):\n"
            "    if name == 'torch' and 'OMP_WAIT_POLICY' not in os.environ: raise SystemExit('torch first')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = spy\n"
            "import main\n")
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=base, cwd=REPO).returncode == 0


@pytest.mark.parametrize("requested, expected", [("auto", 1), (2, 2)])
def test_a_cpu_run_takes_the_chosen_threads_and_logs_them(demo_arrays, tiny, tmp_path, restore_threads, monkeypatch,
                                                           requested, expected):
    monkeypatch.setattr(threads, "USER_THREADS", None)
    torch.set_num_threads(2)
    cls, cfg = tiny("linear_evaluation", demo_arrays, tmp_path, num_epoch=1, device="cpu", cpu_threads=requested)
    cls(cfg)  # the tiny encoder: 4 channels, far below NARROW_PARAMETERS
    assert torch.get_num_threads() == expected
    assert f"{expected} CPU thread(s) (cpu_threads {requested})" in (tmp_path / "log.txt").read_text()


def test_bad_cpu_threads_is_one_line_before_anything_is_written(demo_arrays, tiny, tmp_path):
    cls, cfg = tiny("linear_evaluation", demo_arrays, tmp_path / "run", num_epoch=1, cpu_threads=0)
    with pytest.raises(Exception, match="cpu_threads must be auto or an integer >= 1, got 0"):
        cls(cfg)
    assert not (tmp_path / "run").exists()
