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

from net.encoders import DEFAULT_ENCODER
from net.methods import pretraining_model
from net.weights import IGNORE_WEIGHTS, load_encoder
from processor.flat_config import nest
from processor.metrics import confusion_matrix, per_class_accuracy, topk_accuracy
from processor.processor import DEFAULTS, Processor
from torchlight.checkpoint import read_checkpoint
from torchlight.checkpoint import saved_config as checkpoint_config
from torchlight.config import ConfigError
from torchlight.io import atomic_path
from torchlight.util import release_freed_host_memory

# The shipped weights' folder (tracked by git): evaluations of its files write under ./work_dir instead.
SHIPPED_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


def saved_config(weights):
    """The nested config a checkpoint of ours carries ({} for the release's checkpoints and official ones, and
    for a crafted file's non-mapping config)."""
    return nest(checkpoint_config(read_checkpoint(weights, "weights file")), f"the config of {weights}")


def take_encoder_shape(cfg):
    """The encoder and the layout of `cfg` from its weights' pretraining config: each argument the config or the
    command line names must be the same, or null to take it from the checkpoint even where a base config sets it
    (null without a checkpoint value: the code default). Checkpoints without a config: the config's values stand."""
    saved = saved_config(cfg["weights"])
    mine = {f"encoder.{k}": v for k, v in cfg["encoder"].items()}
    theirs = {f"encoder.{k}": v for k, v in (saved.get("encoder") or {}).items()}
    mine["layout"], theirs["layout"] = cfg["layout"], saved.get("layout")
    for key, value in theirs.items():
        if mine.get(key) is not None and value is not None and mine[key] != value:
            raise ConfigError(f"{key} {mine[key]!r} differs from {value!r} in the config of {cfg['weights']}: "
                              "leave it out, the checkpoint gives it")
    given = {k: v for k, v in cfg["encoder"].items() if v is not None}  # null: an inherited width left out
    cfg["encoder"] = {k: v for k, v in {**(saved.get("encoder") or {}), **given}.items() if v is not None}
    cfg["layout"] = cfg["layout"] or saved.get("layout")


def unique_names(names):
    """`names` with the k-th repeat of a name (k >= 2) as `name#k`: scores.pkl keeps one entry per clip."""
    seen, out = {}, []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


@torch.no_grad()
def calibrate_batchnorm(model, inputs):
    """Random-init baseline: every BatchNorm's running statistics measured on `inputs` (docs/method.md §4).

    One pass without gradient, BN layers in train mode, every other layer in eval mode (no dropout); each
    running statistic ends as the mean of the batches' statistics, the cumulative average of momentum None.
    Without it a random ST-GCN in eval mode normalises with mean 0 / variance 1 and outputs features of
    ~1e-8, which no linear classifier can move from chance. Momentum 1 (the running statistics become the
    batch's) and the sum taken here keep a compiled model in one graph: momentum None reads a counter on the
    host in every layer (a graph break each), and a momentum changed per batch is a new graph per batch.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        if not nn.parameter.is_lazy(m.running_mean):  # a lazy one is fresh until its first batch
            m.reset_running_stats()
        m.momentum = 1.0
        m.train()
    sums, batches = None, 0
    for x in inputs:
        model(x, return_features=True)
        stats = [s.to(torch.float64, copy=True) for s in running_statistics(norms)]
        sums = stats if sums is None else [total + s for total, s in zip(sums, stats)]
        batches += 1
    for stat, total in zip(running_statistics(norms), sums or []):
        stat.copy_(total / batches)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        m.eval()
    return len(norms)


def running_statistics(norms):
    """The running means and variances of the BatchNorm layers `norms` that keep them."""
    return [s for m in norms if m.track_running_stats for s in (m.running_mean, m.running_var)]


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
        encoder = cfg["encoder"].get("name", DEFAULT_ENCODER).rsplit(".", 1)[-1]
        model = "random_init" if cfg["model"] == DEFAULTS["model"] else cfg["model"].rsplit(".", 2)[-2]
        model = model if encoder == DEFAULT_ENCODER or model != "random_init" else f"{encoder}_random_init"
        return os.path.join("work_dir", data, model, name)

    def build_model(self):
        if self.cfg["weights"]:
            take_encoder_shape(self.cfg)
        model = super().build_model()
        if self.cfg["weights"]:
            self.load_weights(model, self.cfg["ignore_weights"])
        return model

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
            take_encoder_shape(self.cfg)
            args = {**saved_config(self.cfg["weights"]).get("model_args", {}), **args}
        args.pop("num_class", None)  # the head's output size is feature_dim
        encoder = pretraining_model(encoder=self.cfg["encoder"], layout=self.layout, **args).encoder_q
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
