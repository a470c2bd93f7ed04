"""The one loop every processor shares: config, device, DDP, AMP, logging, checkpoints and resume.

A processor subclass says what a model is (`build_model`), what one step's inputs are (`prepare`, in
fp32 outside autocast), what one step is (`train_step`) and what evaluation is (`evaluate`); everything
else lives here once.
"""
import functools
import os
import time

import torch
from tqdm import tqdm

from feeder.augment import augment_batch
from feeder.streams import to_stream
from net.utils.layouts import DEFAULT_LAYOUT
from processor.data import make_loader, seed_loaders
from processor.defaults import DEFAULTS, HELP
from processor.device import autocast, compile_modules, device_note, place_model
from processor.features import check_knn_bank, encode_batches, in_dataset_order, knn_top1
from processor.nonfinite import LossCheck, NonFiniteError
from processor.schedule import progress_due, step_lr
from processor.state import read_resume_checkpoint, rng_state, set_rng_state
from processor.validate import expand_home, validate
from torchlight import dist
from torchlight.checkpoint import write_checkpoint
from torchlight.config import ConfigError
from torchlight.io import open_work_dir, write_yaml
from torchlight.threads import set_threads
from torchlight.util import instantiate, logged_errors, prepare_host, seed_everything, select_device, set_numerics


class Processor:
    extra_defaults = {}
    extra_help = {}                        # one line of meaning per key of extra_defaults not in HELP
    work_dir_name = "pretrain"             # default work_dir ./work_dir/<this> (evaluation: beside its weights)
    checkpoint_name = "epoch{}_model.pt"   # pretraining checkpoints; evaluations write other names
    is_monitor = False                     # evaluate() only watches training: runs after the checkpoint

    @classmethod
    def default_config(cls):
        return {**DEFAULTS, **cls.extra_defaults}

    @classmethod
    def config_help(cls):
        return {**HELP, **cls.extra_help}

    def __init__(self, cfg):
        """Check the config, then build in this order: work_dir, model, optimizer, data, resume, config.yaml."""
        expand_home(cfg)
        validate(cfg)  # first: a refused value leaves nothing in the work_dir
        cfg["work_dir"] = cfg["work_dir"] or self.default_work_dir(cfg)
        self.cfg = cfg
        self.distributed = dist.init_distributed(cfg["device"])
        self.device = select_device(cfg["device"], self.distributed)
        self.host_warning = prepare_host(self.device, cfg["amp"])
        self.world = dist.get_world_size()
        if cfg["batch_size"] % self.world:
            raise ConfigError(f"batch_size {cfg['batch_size']} is not divisible by the {self.world} ranks")
        # The run's state, declared here once; the steps below and the loop fill it in.
        self.train_loader = self.val_loader = None  # build_data
        self.loaders = []                           # every loader built (`loader`): each epoch reseeds them
        self.start_epoch, self.epoch, self.step_in_epoch = 0, 0, 0  # optimiser steps taken in this epoch
        self.last_checkpoint = None                 # named when a non-finite loss stops the run
        self.stats = []                             # one dict of logged scalars per epoch run here
        self.loss_check = LossCheck(self.device)    # the epoch's first non-finite loss (optimize)
        set_numerics(cfg["tf32"], cfg["cudnn_benchmark"], cfg["deterministic"])
        seed_everything(cfg["seed"])  # every rank builds the same model; draws differ per rank after it
        self.main = dist.is_main_process()
        self.lock, self.log, self.writer = open_work_dir(cfg["work_dir"], cfg["resume"], cfg["overwrite"], self.main)
        self.log(f"{type(self).__name__} on {self.device}, {self.world} process(es), work_dir {cfg['work_dir']}")
        with logged_errors(self.log):  # a refusal from here on is also log.txt's last line
            self.build()

    def build(self):
        """Model, optimizer, data, resume and config.yaml, in this order, in the opened work_dir."""
        cfg = self.cfg
        self.raw_model = self.build_model().to(self.device)
        threads_note = set_threads(self.device, cfg["cpu_threads"], self.raw_model)
        if dist.get_rank():
            seed_everything(cfg["seed"] + dist.get_rank())
        self.raw_model, self.model = place_model(self.raw_model, cfg, self.device, self.distributed)
        if cfg["compile"]:
            compile_modules(self.compile_targets())
        self.optimizer = self.build_optimizer()
        # One CPU generator drives SkeleMix and on-device augmentation; checkpoints carry its state.
        self.generator = torch.Generator().manual_seed(cfg["seed"] + dist.get_rank())
        self.build_data()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg["amp"] == "fp16")
        notes = (threads_note, self.host_warning, device_note(self.device, cfg["amp"], cfg["compile"]))
        for note in filter(None, notes):
            self.log(note)
        if cfg["resume"]:
            self.resume(cfg["resume"])
        if self.main:  # last: it marks the work_dir as this run's (torchlight.io.claim_work_dir)
            write_yaml(os.path.join(cfg["work_dir"], "config.yaml"), cfg)

    @classmethod
    def default_work_dir(cls, cfg):
        """Beside the weights' run for an evaluation (`<run>/linear`), else ./work_dir/<work_dir_name>."""
        if cfg.get("weights"):
            return os.path.join(os.path.dirname(os.path.abspath(cfg["weights"])), cls.work_dir_name)
        return os.path.join("work_dir", cls.work_dir_name)

    # --- what subclasses say -------------------------------------------------------------------
    def build_model(self):
        """`model`, given `model_args`, the `encoder` it is built on and the data's layout."""
        args = dict(self.cfg["model_args"], encoder=self.cfg["encoder"], layout=self.layout)
        return instantiate(self.cfg["model"], args, "model_args", torch.nn.Module)

    def build_data(self):
        """Create `self.train_loader` (and `self.val_loader` where evaluation needs it)."""
        raise NotImplementedError

    def compile_targets(self):
        """The modules `compile` compiles: the whole model (a wrapper with Python-side draws says otherwise)."""
        return [self.raw_model]

    def prepare(self, batch):
        """The model inputs of one training batch on the device (`to_input`), run in fp32 outside autocast."""
        raise NotImplementedError

    def train_step(self, inputs):
        """Losses (a dict with 'loss') of the prepared `inputs`, run under autocast."""
        raise NotImplementedError

    def evaluate(self, epoch):
        """Evaluate after `epoch` (0-based); returns a dict of scalars to log."""
        return {}

    def set_train_mode(self):
        self.model.train()

    def trainable_parameters(self):
        return [p for p in self.raw_model.parameters() if p.requires_grad]

    # --- building blocks -----------------------------------------------------------------------
    def build_optimizer(self):
        cfg = self.cfg
        if cfg["optimizer"] != "SGD":
            raise ConfigError(f"unknown optimizer {cfg['optimizer']!r}; only SGD is supported")
        return torch.optim.SGD(self.trainable_parameters(), lr=cfg["base_lr"], momentum=cfg["momentum"],
                               nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"])

    def augmented_train_args(self, views):
        """train_feeder_args for `views` augmented views per clip (docs/method.md §1.5), made by the loader's
        workers; with `device_augment` the feeder sends each clip once and `prepare` makes the views on the device."""
        cfg = self.cfg
        device = cfg["device_augment"]
        return dict(cfg["train_feeder_args"], views=1 if device else views, augment=not device, seed=cfg["seed"])

    def dataset(self, args, what):
        """The feeder for `args`; the skeleton layout defaults to the model's."""
        return instantiate(self.cfg["feeder"], {"layout": self.layout, **args}, what, torch.utils.data.Dataset)

    def loader(self, dataset, train):
        """A loader of `dataset` (processor/data.py), kept in `loaders` so that every epoch reseeds it."""
        loader = make_loader(dataset, self.cfg, train, pin_memory=self.device.type == "cuda")
        self.loaders.append(loader)
        return loader

    @functools.cached_property
    def ordered_train_loader(self):
        """Every training clip once, un-augmented and in order (kNN bank, BN statistics, cached features);
        built on first use, once (an evaluation training on these same clips sets it to its own)."""
        return self.loader(self.dataset(dict(self.cfg["train_feeder_args"], views=0), "train_feeder_args"),
                           train=False)

    def knn(self, encoder, pooled):
        """kNN top-1 (%) of the val clips against the training clips for every k of `knn_k`: the monitor's
        and the standalone protocol (docs/method.md §3.4, §4), on pooled features or the encoder's output."""
        bank = self.ordered_train_loader
        check_knn_bank(self.cfg["knn_k"], len(bank.dataset), self.cfg["train_feeder_args"].get("data_path"))
        return knn_top1(*self.encode(encoder, bank, pooled), *self.encode(encoder, self.val_loader, pooled),
                        self.cfg["knn_k"])

    @property
    def layout(self):
        return self.cfg["layout"] or DEFAULT_LAYOUT

    def to_input(self, x, augment=False):
        """A batch on the device, optionally augmented there (docs/method.md §1.5), as the configured stream (§1.4)."""
        x = x.to(self.device, non_blocking=True).float()
        if augment:
            x = augment_batch(x, self.generator, **self.train_loader.dataset.augment_args)  # the feeder's settings
        # No memory-format conversion here: channels-last is 4-D only, and the ST-GCN lays its own
        # activations out channels-last from the (N, C, T, V, M) input.
        return to_stream(x, self.cfg["stream"], self.layout)

    def autocast(self):
        return autocast(self.cfg["amp"], self.device)

    def encode(self, encoder, loader, pooled):
        """(outputs, labels) of every clip of `loader`, gathered over ranks in dataset order: `pooled`, the
        backbone's pooled features; else the encoder's own output (class scores, or the projection head's)."""
        batches = self.progress(loader, "features")
        local = encode_batches(encoder, batches, self.to_input, self.autocast, pooled)
        return in_dataset_order(local, loader.dataset, self.device)

    def progress(self, iterable, desc):
        return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True,
                    disable=not (self.main and self.cfg["progress"]))

    # --- the loop ------------------------------------------------------------------------------
    def start(self):
        cfg = self.cfg
        for epoch in range(self.start_epoch, cfg["num_epoch"]):
            lr = step_lr(cfg["base_lr"], cfg["step"], epoch, cfg["warm_up_epoch"])
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            seed_loaders(self.loaders, cfg["seed"], epoch)
            self.epoch, self.step_in_epoch = epoch, 0
            stats = self.train_epoch(epoch)
            self.loss_check.check(epoch, self.last_checkpoint)
            stats["lr"] = lr
            evaluating = cfg["eval_interval"] > 0 and ((epoch + 1) % cfg["eval_interval"] == 0
                                                       or epoch + 1 == cfg["num_epoch"])
            if evaluating and not self.is_monitor:  # its result belongs in the checkpoint (history, best)
                stats.update(self.evaluate_keeping_rng(epoch))
            if (epoch + 1) % cfg["save_interval"] == 0 or epoch + 1 == cfg["num_epoch"]:
                self.save_checkpoint(epoch)
            if evaluating and self.is_monitor:  # after the checkpoint: a failing monitor loses no epoch
                stats.update(self.monitor(epoch))
            self.stats.append(stats)
            self.log(f"epoch {epoch + 1}/{cfg['num_epoch']} " +
                     " ".join(f"{k} {v:.4g}" for k, v in stats.items()))
            if self.writer:
                for k, v in stats.items():
                    self.writer.add_scalar(k, v, epoch + 1)
        self.finish()

    def evaluate_keeping_rng(self, epoch):
        """`evaluate`, leaving every random state as it found it: a resumed run, whose checkpoint may be
        written before or after an evaluation, starts the next epoch with the uninterrupted run's state."""
        state = rng_state(self.generator, self.device)
        try:
            return self.evaluate(epoch)
        finally:
            set_rng_state(state, self.generator, self.device)

    def monitor(self, epoch):
        """The monitor's `evaluate`; its failure (NaN features, no validation clips) is one warning line and
        training goes on: the epoch's checkpoint is already written."""
        try:
            return self.evaluate_keeping_rng(epoch)
        except (NonFiniteError, ValueError) as err:
            self.log(f"warning: epoch {epoch + 1}: the {type(self).__name__} monitor failed, training goes on "
                     f"(last checkpoint {self.last_checkpoint}): {err}")
            return {}

    def finish(self):
        if self.writer:
            self.writer.close()
        if self.lock:
            self.lock.release()
        dist.barrier()  # rank 0's checkpoints and results exist on every rank's return (a table's next run reads them)

    def optimize(self, loss):
        """Backward, gradient-norm clip (after backward, docs/method.md §4b) when `grad_clip` is set, SGD step.

        A non-finite loss is noted on the device; the epoch then ends in `loss_check.check`, before evaluation
        and before any checkpoint is written, so the last checkpoint stays the last good state.
        """
        self.step_in_epoch += 1
        self.loss_check.note(loss.detach().float(), self.step_in_epoch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.cfg["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def train_batches(self, epoch):
        """The training batches of `epoch`: the train loader, its order and augmentation seeded by the epoch."""
        self.train_loader.sampler.set_epoch(epoch)
        self.train_loader.dataset.set_epoch(epoch)
        return self.train_loader

    def train_epoch(self, epoch):
        self.set_train_mode()
        self.loss_check = LossCheck(self.device)
        sums, count, t0 = None, 0, time.perf_counter()
        shown = t0  # when the progress bar last read the loss
        bar = self.progress(self.train_batches(epoch), f"epoch {epoch + 1}")
        for step, batch in enumerate(bar):
            # Input preparation stays fp32: under autocast the shear's einsum would round the positions
            # to bf16/fp16 before SkeleMix, data BN and the motion/bone differences.
            inputs = self.prepare(batch)
            with self.autocast():
                losses = self.train_step(inputs)
            self.optimize(losses["loss"])
            n = len(batch[1])
            count += n
            # Summed on the device and read once per epoch: reading a loss every step waits for the GPU.
            weighted = torch.stack([v.detach().double() for v in losses.values()]) * n
            sums = weighted if sums is None else sums + weighted
            if not bar.disable and progress_due(step, bar.total, time.perf_counter() - shown):
                shown = time.perf_counter()
                bar.set_postfix(loss=f"{losses['loss'].item():.4f}",
                                samples_s=f"{count * self.world / (time.perf_counter() - t0):.1f}")
        if count == 0:
            raise ConfigError(f"the training set has fewer clips than one batch (batch_size {self.cfg['batch_size']})")
        # Logged means are over the whole global batch, not rank 0's share.
        totals = dist.all_reduce_sum(torch.cat([torch.tensor([count], dtype=torch.float64, device=self.device), sums]))
        count, *sums = totals.tolist()
        stats = {f"train/{k}": v / count for k, v in zip(losses, sums)}
        stats["train/samples_per_s"] = count / (time.perf_counter() - t0)
        return stats

    # --- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, epoch, extra=None):
        """Write `checkpoint_name` atomically: model, optimizer, epoch, config, RNG states and a checksum.

        Called on every rank: each rank's RNG states travel to rank 0, the only writer.
        """
        rng = dist.all_gather_object(rng_state(self.generator, self.device))
        if not self.main:
            return
        state = dict(model=self.raw_model.state_dict(), optimizer=self.optimizer.state_dict(),
                     scaler=self.scaler.state_dict(), epoch=epoch + 1, config=self.cfg, rng=rng[0],
                     processor=type(self).__name__, **(extra or {}))
        if self.world > 1:
            state["rng_per_rank"] = rng
        path = os.path.join(self.cfg["work_dir"], self.checkpoint_name.format(epoch + 1))
        write_checkpoint(state, path)
        self.last_checkpoint = path
        self.log(f"saved {path}")

    def resume(self, path):
        """Continue exactly where the run that wrote checkpoint `path` stopped."""
        state = read_resume_checkpoint(path, type(self).__name__, self.raw_model.state_dict(), self.cfg,
                                       self.checkpoint_name, self.device)
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when written with amp off or bf16: an fp16 resume starts a new scale
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = state["epoch"]
        # Each rank continues its own random stream when the world size is unchanged.
        per_rank = state.get("rng_per_rank", [state["rng"]])
        set_rng_state(per_rank[dist.get_rank()] if len(per_rank) == self.world else state["rng"], self.generator,
                      self.device)
        self.last_checkpoint = path
        self.log(f"resumed from {path} at epoch {self.start_epoch}" + "".join(state.get("schedule", [])))
        return state
