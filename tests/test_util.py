"""torchlight/util.py: a config imports only this project's classes and torch's."""
import os

import pytest
import torch

import main
from torchlight.config import ConfigError
from torchlight.util import import_class, instantiate


def test_a_config_imports_project_and_torch_classes_only(tmp_path):
    assert import_class("torch.nn.Linear") is torch.nn.Linear
    assert import_class("net.st_gcn.STGCN").__name__ == "STGCN"
    marker = tmp_path / "code_ran"
    with pytest.raises(ConfigError, match="'subprocess.run' is not importable from a config: only feeder, net"):
        instantiate("subprocess.run", dict(args=["touch", str(marker)]), "model_args")
    with pytest.raises(ConfigError, match="'torch.load' is not importable from a config: it is not a class"):
        import_class("torch.load")
    assert not marker.exists()


def test_a_config_names_classes_of_the_right_kind_only(tmp_path, monkeypatch):
    """Before: `model: torchlight.io.write_yaml` passed the allow-list and wrote a file of the config's choice
    (a .pth that Python runs at its next start)."""
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "evil.pth"
    with pytest.raises(ConfigError, match="'torchlight.io.write_yaml' is not importable from a config: it is not a"):
        instantiate("torchlight.io.write_yaml", dict(path=str(target), data={}), "model_args", torch.nn.Module)
    with pytest.raises(SystemExit, match="'torchlight.io.write_yaml' is not importable"):
        main.main(["linear_evaluation", "--model", "torchlight.io.write_yaml", "--model_args.path", str(target),
                   "--model_args.data", "{a: 1}"])
    assert not target.exists() and os.listdir(tmp_path) == []
    with pytest.raises(ConfigError, match="'feeder.feeder.Feeder' is not a torch.nn.modules.module.Module subclass"):
        import_class("feeder.feeder.Feeder", torch.nn.Module)
    with pytest.raises(SystemExit, match="'net.st_gcn.STGCN' is not a torch.utils.data.dataset.Dataset subclass"):
        main.main(["linear_evaluation", "--feeder", "net.st_gcn.STGCN", "--print_config"])
    with pytest.raises(SystemExit, match="'torch.nn.Linear' is not a torch.utils.data.dataset.Dataset"):
        main.main(["linear_evaluation", "--feeder", "torch.nn.Linear"])
