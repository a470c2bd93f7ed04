"""Models built from the release's flat arguments (ST-GCN's beside MoCo's, graph_args), as a flat config is read."""
from net.encoders import Classifier
from net.methods import pretraining_model
from processor.flat_config import nest


def classifier(num_class=60, **flat_args):
    """The evaluation network of flat model_args (`hidden_channels`, `graph_args`, ...)."""
    cfg = nest({"model_args": dict(flat_args, num_class=num_class)})
    return Classifier(cfg.get("encoder"), cfg["model_args"]["num_class"], cfg.get("layout"))


def moco(**flat_args):
    """The pretraining model of flat model_args (`hidden_channels`, `swap_params`, `queue_size`, ...)."""
    cfg = nest({"model_args": flat_args})
    return pretraining_model(cfg.get("encoder"), cfg.get("layout"), **cfg["model_args"])
