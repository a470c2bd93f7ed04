"""Evaluation protocols: what they share, fine-tune / semi-supervised and kNN (docs/method.md §4); linear
evaluation is processor/linear.py."""
import contextlib
import json
import math
import os
import pickle

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from net.moco import MoCo
from processor.metrics import confusion_matrix, per_class_accuracy, topk_accuracy
from processor.processor import DEFAULTS, Processor
from torchlight.checkpoint import check_state_dict, read_checkpoint, saved_config
from torchlight.config import ConfigError
from torchlight.io import atomic_path
from torchlight.util import release_freed_host_memory

# The classifier is trained anew; everything else of the encoder must come from the checkpoint.
CLASSIFIER_KEYS = {"fc.weight", "fc.bias"}
# What an evaluation drops from a pretraining checkpoint: projection head, key encoder and queue (docs/method.md §4).
IGNORE_WEIGHTS = ["encoder_q.fc", "encoder_k", "queue"]
# The encoder's shape: an evaluation takes it from the pretraining config a checkpoint of ours carries.
SHAPE_ARGS = ("in_channels", "hidden_channels", "hidden_dim", "graph_args")
# The shipped weights' folder (tracked by git): evaluations of its files write under ./work_dir instead.
SHIPPED_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


def load_encoder(model, path, ignore_weights=()):
    """Load the query encoder of a checkpoint (ours, or the original release's) into `model`.

    Accepts our checkpoints ({'model': ...}), bare state dicts, `module.` prefixes (DataParallel/DDP)
    and the `encoder_q.` prefix of the contrastive wrapper; keys starting with an `ignore_weights`
    prefix are dropped first. Returns (loaded, ignored, missing) key lists.
    """
    state = read_checkpoint(path, "weights file")
    state = state.get("model", state) if isinstance(state, dict) else state
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ConfigError(f"weights file {path} holds no state dict (neither a 'model' entry nor tensors by name)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ignored = [k for k in state if any(k.startswith(p) for p in ignore_weights)]
    state = {k: v for k, v in state.items() if k not in ignored}
    if any(k.startswith("encoder_q.") for k in state):
        ignored += [k for k in state if not k.startswith("encoder_q.")]
        state = {k.removeprefix("encoder_q."): v for k, v in state.items() if k.startswith("encoder_q.")}
    own = model.state_dict()
    check_state_dict(path, own, state, may_miss=CLASSIFIER_KEYS, what="encoder", hint=" (see ignore_weights)")
    missing = sorted(set(own) - set(state))
    model.load_state_dict(state, strict=False)
    return sorted(state), sorted(ignored), missing


def unique_names(names):
    """`names` with the k-th repeat of a name (k >= 2) as `name#k`: scores.pkl keeps one entry per clip."""
    seen, out = {}, []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


@torch.no_grad()
def calibrate_batchnorm(model, inputs):
    """Random-init baseline: every BatchNorm's running statistics measured on `inputs` (issue 10 item 1).

    One pass without gradient, BN layers in train mode with a cumulative average (momentum None), every
    other layer in eval mode (no dropout). Without it a random ST-GCN in eval mode normalises with
    mean 0 / variance 1 and outputs features of ~1e-8, which no linear classifier can move from chance.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        if not nn.parameter.is_lazy(m.running_mean):  # a lazy one is fresh until its first batch
            m.reset_running_stats()
        m.momentum = None
        m.train()
    for x in inputs:
        model(x, return_features=True)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        m.eval()
    return len(norms)


class Evaluation(Processor):
    """What every evaluation shares: a pretrained (or BN-calibrated random) encoder and a result file."""

    extra_defaults = dict(ignore_weights=IGNORE_WEIGHTS, result_file="result.json")
    extra_help = dict(result_file="the result's file name in work_dir")

    @classmethod
    def protocol_folder(cls, cfg):
        """The folder name of this protocol's results (`work_dir_name`; linear evaluation's probe differs)."""
        return cls.work_dir_name

    @classmethod
    def default_work_dir(cls, cfg):
        """Beside the weights' run: `<run>/linear`, `<run>/probe`, `<run>/finetune`, `<run>/knn`, `_1pct_labels`
        added with a label_fraction; for a shipped file of weights/, ./work_dir/<its stem>/<protocol>. A baseline
        without weights has no run: ./work_dir/<data>/<model>/<protocol>, such as
        ./work_dir/ucla_frame32_xview/random_init/linear."""
        name = cls.protocol_folder(cfg)
        fraction = cfg["train_feeder_args"].get("label_fraction")
        if fraction is not None:
            name += f"_{100 * fraction:g}pct_labels"
        if cfg["weights"]:
            run = os.path.dirname(os.path.abspath(cfg["weights"]))
            if os.path.realpath(run) == os.path.realpath(SHIPPED_WEIGHTS):  # never write into the repository
                run = os.path.join("work_dir", os.path.splitext(os.path.basename(cfg["weights"]))[0])
            return os.path.join(run, name)
        data = cfg["test_feeder_args"].get("data_path")
        data = "_".join(os.path.dirname(os.path.abspath(data)).split(os.sep)[-2:]) if data else ""
        model = "random_init" if cfg["model"] == DEFAULTS["model"] else cfg["model"].rsplit(".", 2)[-2]
        return os.path.join("work_dir", data, model, name)

    def build_model(self):
        if self.cfg["weights"]:
            self.take_encoder_shape()
        model = super().build_model()
        if self.cfg["weights"]:
            self.load_weights(model, self.cfg["ignore_weights"])
        return model

    def take_encoder_shape(self):
        """model_args of SHAPE_ARGS from the weights' pretraining config; a value the config or command line
        names must be the same, or null to take it from the checkpoint even where a base config sets it. The
        release's checkpoints carry no config: the config's values stand."""
        state = read_checkpoint(self.cfg["weights"], "weights file")
        saved = saved_config(state, "model_args")
        args = self.cfg["model_args"]
        for key in (k for k in SHAPE_ARGS if k in saved):
            if args.get(key) is not None and args[key] != saved[key]:  # null: an inherited width left out
                raise ConfigError(f"model_args.{key} {args[key]!r} differs from {saved[key]!r} in the config of "
                                  f"{self.cfg['weights']}: leave it out, the checkpoint gives it")
            args[key] = saved[key]
        for key in [k for k in SHAPE_ARGS if k in args and args[k] is None]:
            del args[key]  # no checkpoint value either: the code default

    def load_weights(self, model, ignore_weights):
        """Load `weights` into `model`, logging and writing weights.json: which keys came from where."""
        loaded, ignored, missing = load_encoder(model, self.cfg["weights"], ignore_weights)
        report = os.path.join(self.cfg["work_dir"], "weights.json")
        self.log(f"loaded {len(loaded)} tensors from {self.cfg['weights']}; ignored {len(ignored)} "
                 f"({', '.join(sorted({k.split('.')[0] for k in ignored})) or 'none'}); "
                 f"trained from scratch: {', '.join(missing) or 'none'}; every key in {report}")
        self.write_json("weights.json", dict(weights=self.cfg["weights"], loaded=loaded, ignored=ignored,
                                             missing=missing))

    def write_json(self, name, result):
        """`result` as work_dir/`name`, atomically, by rank 0 only."""
        if self.main:
            with atomic_path(os.path.join(self.cfg["work_dir"], name)) as tmp, open(tmp, "w") as f:
                json.dump(result, f, indent=1)

    def calibrate_random_encoder(self, model):
        """Without `weights`, the frozen encoder is a random one with BN statistics of the training clips:
        all of them, labelled or not (with `label_fraction` pretraining saw them all too)."""
        # In fp32 (no autocast): statistics, not speed, are what this pass is for.
        loader = self.ordered_train_loader
        if self.world > 1 or self.cfg["train_feeder_args"].get("label_fraction") is not None:
            # every training clip, in one order on every rank: what one process without labels would measure
            clips = self.dataset(dict(self.cfg["train_feeder_args"], views=0, label_fraction=None), "train_feeder_args")
            loader = DataLoader(clips, batch_size=loader.batch_size, num_workers=loader.num_workers,
                                worker_init_fn=release_freed_host_memory)
        n = calibrate_batchnorm(model, (self.to_input(x) for x, _, _ in self.progress(loader, "BN statistics")))
        self.log(f"no weights: random encoder, running statistics of its {n} BatchNorm layers measured on "
                 "the training clips (random-init baseline)")


class Classification(Evaluation):
    """Supervised training of an encoder + classifier with top-1/top-5 evaluation and a result file."""

    extra_defaults = dict(Evaluation.extra_defaults, keep_checkpoints=False,
                          augment=False)  # train on the crop + shear of docs/method.md §1.5 (§4 trains without)
    extra_help = dict(Evaluation.extra_help, augment="train on cropped and sheared clips (the protocol: without)",
                      keep_checkpoints="keep every checkpoint written (false: the last and the best-on-val only)")
    checkpoint_name = "eval_epoch{}.pt"  # never a pretraining checkpoint's name: it may sit beside one

    def __init__(self, cfg):
        self.history, self.best = [], None  # one result per evaluation, and the best top-1 of them
        self.last_scores = self.last_labels = None  # of the last evaluation: scores.pkl, confusion
        super().__init__(cfg)

    def build_data(self):
        cfg = self.cfg
        args = self.augmented_train_args(1) if cfg["augment"] else dict(cfg["train_feeder_args"], views=0)
        if cfg["num_epoch"] < 1:
            raise ConfigError(f"num_epoch must be >= 1 for {type(self).__name__}, got {cfg['num_epoch']}")
        train = self.dataset(args, "train_feeder_args")
        val = self.dataset(cfg["test_feeder_args"], "test_feeder_args")
        for dataset in (train, val):  # before training: a bad label would only fail at its step or at the end
            dataset.check_labels(self.raw_model.fc.out_features)
        self.train_loader = self.loader(train, train=True)
        if not cfg["augment"]:  # the training clips in order are this same dataset: not built twice
            self.ordered_train_loader = self.loader(train, train=False)
        self.val_loader = self.loader(val, train=False)
        self.names = unique_names(val.subset_names())  # the clips evaluated, in order (label_fraction too)
        if cfg["train_feeder_args"].get("label_fraction") is not None and self.main:
            path = os.path.join(cfg["work_dir"], "labelled_subset.txt")
            with atomic_path(path) as tmp, open(tmp, "w") as f:
                f.write("\n".join(train.subset_names()) + "\n")
            self.log(f"labelled subset: {len(train.indices)} clips, names in {path}")

    def prepare(self, batch):
        x, y, _ = batch
        if self.cfg["augment"]:
            x = self.to_input(x[0], augment=self.cfg["device_augment"])  # the one augmented view
        else:
            x = self.to_input(x)
        return x, y.to(self.device, non_blocking=True)

    def train_step(self, inputs):
        x, y = inputs
        return {"loss": F.cross_entropy(self.model(x).float(), y)}

    def evaluate(self, epoch):
        scores, labels = self.encode(self.raw_model, self.val_loader, pooled=False)
        result = dict(epoch=epoch + 1, top1=100 * topk_accuracy(scores, labels, 1),
                      top5=100 * topk_accuracy(scores, labels, 5))
        self.history.append(result)
        if self.best is None or result["top1"] > self.best["top1"]:
            self.best = result
        self.last_scores, self.last_labels = scores, labels
        return {"val/top1": result["top1"], "val/top5": result["top5"]}

    def save_checkpoint(self, epoch, extra=None):
        """With the evaluations so far: a resumed run's result.json keeps the whole history and its best."""
        super().save_checkpoint(epoch, dict(extra or {}, history=self.history, best=self.best))
        if self.main and not self.cfg["keep_checkpoints"]:
            keep = {epoch + 1, (self.best or {}).get("epoch")}
            for older in range(1, epoch + 1):
                if older not in keep:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(self.cfg["work_dir"], self.checkpoint_name.format(older)))

    def resume(self, path):
        state = super().resume(path)
        self.history, self.best = list(state.get("history", [])), state.get("best")
        return state

    def finish(self):
        if self.cfg["num_epoch"] > 0 and not self.history:  # eval_interval 0: still one final result
            self.evaluate(self.cfg["num_epoch"] - 1)
        if self.cfg["num_epoch"] > 0 and self.main:
            self.write_result()
        super().finish()

    def write_result(self):
        """result.json (final and best-on-val top-1/top-5, per-class accuracy, confusion) and scores.pkl."""
        scores, labels = self.last_scores.cpu(), self.last_labels.cpu()
        confusion = confusion_matrix(scores.argmax(1), labels, scores.shape[1])
        result = dict(final=self.history[-1], best_on_val=self.best, history=self.history,
                      per_class_top1=[None if math.isnan(a) else a for a in per_class_accuracy(confusion)],
                      confusion=confusion.tolist(),
                      scores_file="scores.pkl", weights=self.cfg["weights"], stream=self.cfg["stream"])
        self.write_json(self.cfg["result_file"], result)
        # Original release format: {clip name: scores}, fused across streams by tools/ensemble.py.
        with atomic_path(os.path.join(self.cfg["work_dir"], "scores.pkl")) as tmp, open(tmp, "wb") as f:
            pickle.dump(dict(zip(self.names, scores.numpy())), f)
        self.log(f"final top1 {result['final']['top1']:.2f} top5 {result['final']['top5']:.2f}; "
                 f"best-on-val top1 {self.best['top1']:.2f} (epoch {self.best['epoch']}); written "
                 f"{os.path.join(self.cfg['work_dir'], self.cfg['result_file'])}")


class FinetuneEvaluation(Classification):
    """Fine-tuning and semi-supervised learning: the whole network trains, gradient norm clipped (docs/method.md §4)."""

    extra_defaults = dict(Classification.extra_defaults, base_lr=0.1, step=[50, 70, 90], num_epoch=110,
                          grad_clip=5.0, weight_decay=1e-4)
    work_dir_name = "finetune"


class KNNEvaluation(Evaluation):
    """Standalone kNN evaluation of a pretrained encoder, the protocol of the pretraining monitor (docs/method.md §4).

    `knn_features`: `pooled` (default), the 256-d pooled backbone features linear evaluation sees; `head`,
    the projection head's output as in the pretraining monitor (the release's), which needs the head: the
    pretraining config a checkpoint of ours carries, else `model_args` naming it (`head`, `feature_dim`).
    """

    extra_defaults = dict(Evaluation.extra_defaults, knn_k=[10, 20, 40], num_epoch=0, result_file="knn.json",
                          knn_features="pooled")
    extra_help = dict(Evaluation.extra_help, knn_k="the k of the top-1 accuracies",
                      knn_features="pooled (the backbone's features) | head (the projection head's output)")
    work_dir_name = "knn"

    def build_model(self):
        features = self.cfg["knn_features"]
        if features not in ("pooled", "head"):
            raise ConfigError(f"knn_features must be pooled or head, not {features!r}")
        if features == "pooled":
            return super().build_model()
        # The query encoder with its projection head, built as pretraining built it.
        args = dict(self.cfg["model_args"])
        if self.cfg["weights"]:
            state = read_checkpoint(self.cfg["weights"], "weights file")
            args = {**saved_config(state, "model_args"), **args}
        args.pop("num_class", None)  # the head's output size is feature_dim
        encoder = MoCo(**args).encoder_q
        if self.cfg["weights"]:
            self.load_weights(encoder, ignore_weights=["encoder_k", "queue"])
        return encoder

    def build_optimizer(self):
        return None  # nothing trains

    def build_data(self):
        self.val_loader = self.loader(self.dataset(self.cfg["test_feeder_args"], "test_feeder_args"), train=False)

    def start(self):
        if not self.cfg["weights"]:
            self.calibrate_random_encoder(self.raw_model)
        accs = self.knn(self.raw_model, pooled=self.cfg["knn_features"] == "pooled")
        self.log("kNN " + " ".join(f"{k} {v:.2f}" for k, v in accs.items()))
        self.write_json(self.cfg["result_file"], dict(accs, weights=self.cfg["weights"], stream=self.cfg["stream"],
                                                      knn_features=self.cfg["knn_features"]))
        self.finish()
        return accs
