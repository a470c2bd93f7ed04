"""torchlight/util.py: a config imports only this project's classes and torch's."""
import pytest
import torch

from torchlight.config import ConfigError
from torchlight.util import import_class, instantiate


def test_a_config_imports_project_and_torch_classes_only(tmp_path):
    assert import_class("torch.nn.Linear") is torch.nn.Linear
    assert import_class("net.st_gcn.STGCN").__name__ == "STGCN"
    marker = tmp_path / "code_ran"
    with pytest.raises(ConfigError, match="'subprocess.run' is not importable from a config: only feeder, net"):
        instantiate("subprocess.run", dict(args=["touch", str(marker)]), "model_args")
    with pytest.raises(ConfigError, match="'torch.load' is not importable from a config: of torch only classes"):
        import_class("torch.load")
    assert not marker.exists()
