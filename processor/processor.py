"""The one loop every processor shares: config, device, DDP, AMP, logging, checkpoints and resume.

A processor subclass says what a model is (`build_model`), what one step's inputs are (`prepare`, in
fp32 outside autocast), what one step is (`train_step`) and what evaluation is (`evaluate`); everything
else lives here once.
"""
import contextlib
import os
import random
import re
import time

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from feeder.augment import augment_batch
from feeder.streams import to_stream
from net.utils.layouts import model_layout
from processor.metrics import knn_accuracies
from processor.validate import validate
from torchlight.checkpoint import check_state_dict, read_checkpoint, write_checkpoint
from torchlight.config import ConfigError
from torchlight.dist import (
    all_gather_object,
    all_reduce_sum,
    barrier,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
)
from torchlight.io import Logger, atomic_path, claim_work_dir
from torchlight.util import (
    instantiate,
    keep_freed_host_memory,
    release_freed_host_memory,
    seed_everything,
    select_device,
    set_numerics,
)

DEFAULTS = dict(
    work_dir=None,
    overwrite=False,
    seed=1,
    device="auto",
    # data
    feeder="feeder.feeder.Feeder",
    train_feeder_args={},
    test_feeder_args={},
    stream="joint",
    num_workers=2,
    batch_size=128,
    test_batch_size=256,
    # model
    model="net.st_gcn.Model",
    model_args={},
    weights=None,
    ignore_weights=[],
    # optimisation
    optimizer="SGD",
    base_lr=0.1,
    momentum=0.9,
    nesterov=False,
    weight_decay=1e-4,
    step=[],
    warm_up_epoch=0,
    num_epoch=300,
    grad_clip=None,
    # speed
    speed="exact",
    amp="off",
    compile=False,
    channels_last=False,
    device_augment=False,
    sync_bn=False,
    # GPU numerics (README: Speed): exact fp32 and cuDNN's fastest algorithms unless told otherwise
    tf32=False,
    cudnn_benchmark=True,
    deterministic=False,
    # bookkeeping
    save_interval=5,
    eval_interval=5,
    resume=None,
    progress=True,
)

# One line of meaning per key, shown by `python main.py <processor> --help` beside the default.
HELP = dict(
    speed="exact: the paper's numerics; fast: bf16, TF32, device augmentation, loader workers and compile "
          "at once (docs/gpu.md)",
    work_dir="everything a run writes goes here; default: beside the weights (evaluation) or ./work_dir/pretrain",
    overwrite="allow a work_dir that holds another run's files (nothing is deleted)",
    seed="seed of every random draw: initialisation, data order, augmentation, SkeleMix",
    device="auto (this rank's CUDA device when there is one, else cpu), cpu, cuda, cuda:1 or 1",
    feeder="dataset class, by dotted name",
    train_feeder_args="arguments of the training feeder (listed below)",
    test_feeder_args="arguments of the evaluation feeder (listed below); none: no evaluation",
    stream="joint | motion | bone, computed on the batch on the device",
    num_workers="DataLoader worker processes",
    batch_size="global batch: each of N ranks takes batch_size / N",
    test_batch_size="batch of feature extraction and evaluation, per rank",
    model="model class, by dotted name",
    model_args="arguments of the model (listed below)",
    weights="checkpoint to initialise from (ours or the original release's)",
    ignore_weights="key prefixes dropped from `weights`",
    optimizer="only SGD",
    base_lr="learning rate before warm-up and steps",
    momentum="SGD momentum",
    nesterov="Nesterov momentum",
    weight_decay="SGD weight decay",
    step="epochs after which lr is multiplied by 0.1",
    warm_up_epoch="lr rises linearly over these first epochs (the release's fine-tuning: 10)",
    num_epoch="epochs to train",
    grad_clip="max gradient norm, clipped after backward; none: no clipping",
    amp="mixed precision: off | bf16 | fp16",
    compile="torch.compile the model",
    channels_last="channels-last memory format for the model",
    device_augment="augment the batch on the device instead of per sample in the loader workers",
    sync_bn="DDP: SyncBatchNorm instead of per-rank statistics",
    tf32="TF32 matmuls and convolutions (Ampere and newer): ~10 mantissa bits",
    cudnn_benchmark="time cuDNN's algorithms once per input shape and keep the fastest",
    deterministic="deterministic algorithms (cudnn_benchmark off): a resume repeats bit for bit",
    save_interval="epochs between checkpoints (the last epoch always writes one)",
    eval_interval="epochs between evaluations (kNN monitor, val accuracy); 0: none but the final",
    resume="checkpoint written by a previous run of this processor, to continue",
    progress="tqdm progress bars",
)


# What makes a run: a resume with another value of these is another run (docs/errors.md).
RESUME_KEYS = ("method", "model", "model_args", "batch_size", "stream")

PROGRESS_SECONDS = 1.0  # least time between the progress bar's loss reads (each read waits for the device)


def progress_due(step, steps, seconds_since_shown):
    """Whether the progress bar reads the loss at `step` (0-based) of `steps` (None when unknown): the first
    and the last step, and any step PROGRESS_SECONDS after the last read, so a short epoch ends showing
    its last loss and a long one reads the device about once a second, not every step."""
    return step == 0 or step + 1 == steps or seconds_since_shown >= PROGRESS_SECONDS


def cpu_amp_is_fast(amp):
    """Whether autocast to `amp` ('bf16' or 'fp16') beats fp32 on this CPU.

    bf16 needs oneDNN's native bf16 kernels. fp16 never does: even where oneDNN reports native fp16,
    its fp16 convolution backward is the reference kernel, ~100x slower than fp32 (measured on an
    AVX512-FP16/AMX Xeon with torch 2.13).
    """
    return amp == "bf16" and torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def step_lr(base_lr, steps, epoch, warm_up_epoch=0):
    """Step schedule: base_lr times 0.1 for every milestone already passed (SPEC §3.4, §4), after an
    optional linear warm-up of base_lr * (epoch + 1) / warm_up_epoch, as the release's fine-tuning."""
    if epoch < warm_up_epoch:
        return base_lr * (epoch + 1) / warm_up_epoch
    return base_lr * 0.1 ** sum(epoch >= s for s in steps)


def restore_cuda_rng(state, device):
    """Set `device`'s CUDA generator from a checkpoint's state; nothing on CPU or without a state.

    Older checkpoints hold a list over every GPU visible then: this device takes its own entry, if any.
    """
    if state is None or device.type != "cuda":
        return
    if isinstance(state, (list, tuple)):
        index = device.index or 0
        if index >= len(state):
            return
        state = state[index]
    torch.cuda.set_rng_state(state.cpu(), device)


class ShardSampler(Sampler):
    """Rank r of N takes indices r, r+N, ...: every clip once over all ranks, no padding duplicates."""

    def __init__(self, n):
        self.indices = range(get_rank(), n, get_world_size())

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class NonFiniteError(ValueError):
    """A loss or score is NaN or infinite: the run stops instead of writing it."""


def loader_seed(seed, rank, epoch):
    """Seed of a loader's own generator (its workers' seeds) in `epoch`, independent of any global stream."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def check_finite(outputs, dataset):
    """Encoder outputs (features or scores) of `dataset` must be finite: NaN scores make no result."""
    bad = (~torch.isfinite(outputs.reshape(len(outputs), -1))).any(1)
    if bad.any():
        where = getattr(dataset, "data_path", type(dataset).__name__)
        raise NonFiniteError(f"the encoder's outputs for {int(bad.sum())} of {len(bad)} clips of {where} hold NaN "
                             "or inf; no result written")


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
        validate(cfg)  # first: a refused value leaves nothing in the work_dir
        cfg["work_dir"] = cfg["work_dir"] or self.default_work_dir(cfg)
        self.cfg = cfg
        self.distributed = init_distributed(cfg["device"])
        self.device = select_device(cfg["device"], self.distributed)
        if self.device.type == "cpu":
            keep_freed_host_memory()  # no page faults on every step's activations (README: Speed)
        self.world = get_world_size()
        if cfg["batch_size"] % self.world:
            raise ConfigError(f"batch_size {cfg['batch_size']} is not divisible by the {self.world} ranks")
        if cfg["sync_bn"] and cfg["compile"]:
            raise ConfigError("sync_bn and compile are both true: SyncBatchNorm does not trace under "
                              "torch.compile (a graph break at every BatchNorm); set one of them false")
        # The run's state, declared here once; the steps below and the loop fill it in.
        self.train_loader = self.val_loader = None  # build_data
        self.train_clips = None                     # every training clip in order, on first use (clip_loader)
        self.start_epoch, self.epoch, self.step = 0, 0, 0
        self.last_checkpoint = None                 # named when a non-finite loss stops the run
        self.stats = []                             # one dict of logged scalars per epoch run here
        self.reset_loss_check()                     # the epoch's first non-finite loss (optimize)
        set_numerics(cfg["tf32"], cfg["cudnn_benchmark"], cfg["deterministic"])
        seed_everything(cfg["seed"])  # every rank builds the same model; draws differ per rank after it
        self.open_work_dir()
        self.raw_model = self.build_model().to(self.device)
        if get_rank():
            seed_everything(cfg["seed"] + get_rank())
        self.model = self.place_model()
        self.optimizer = self.build_optimizer()
        # One CPU generator drives SkeleMix and on-device augmentation; checkpoints carry its state.
        self.generator = torch.Generator().manual_seed(cfg["seed"] + get_rank())
        self.build_data()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg["amp"] == "fp16")
        if self.device.type == "cpu" and cfg["amp"] in ("bf16", "fp16") and not cpu_amp_is_fast(cfg["amp"]):
            self.log(f"warning: amp {cfg['amp']} is slower than fp32 (amp off) on this CPU: "
                     + ("its fp16 convolution backward is a reference kernel" if cfg["amp"] == "fp16"
                        else "it has no native bf16 kernels"))
        if cfg["resume"]:
            self.resume(cfg["resume"])
        if self.main:  # last: it marks the work_dir as this run's (torchlight.io.claim_work_dir)
            with atomic_path(os.path.join(cfg["work_dir"], "config.yaml")) as tmp, open(tmp, "w") as f:
                yaml.safe_dump(cfg, f, sort_keys=False)

    def open_work_dir(self):
        """Claim the work_dir (before anything is written: it belongs to one run), open log and TensorBoard."""
        cfg = self.cfg
        self.main = is_main_process()
        self.lock = claim_work_dir(cfg["work_dir"], cfg["resume"], cfg["overwrite"]) if self.main else None
        self.log = Logger(cfg["work_dir"], enabled=self.main)
        self.writer = None
        if self.main:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(os.path.join(cfg["work_dir"], "tensorboard"))
        self.log(f"{type(self).__name__} on {self.device}, {self.world} process(es), work_dir {cfg['work_dir']}")

    def place_model(self):
        """`raw_model` as the loop runs it: channels-last, SyncBatchNorm, DDP and compiled as configured."""
        cfg = self.cfg
        if cfg["channels_last"]:
            self.raw_model = self.raw_model.to(memory_format=torch.channels_last)
        if self.distributed and cfg["sync_bn"]:
            if self.device.type != "cuda":
                raise ConfigError("sync_bn needs CUDA devices (torch's SyncBatchNorm is GPU-only); "
                                  "on CPU use model_args.shuffle_bn for MoCo or set sync_bn false")
            self.raw_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.raw_model)
        model = self.raw_model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        if cfg["compile"]:
            for module in self.compile_targets():
                module.compile()  # in place: state-dict names unchanged
        return model

    @classmethod
    def default_work_dir(cls, cfg):
        """Beside the weights' run for an evaluation (`<run>/linear`), else ./work_dir/<work_dir_name>."""
        if cfg.get("weights"):
            return os.path.join(os.path.dirname(os.path.abspath(cfg["weights"])), cls.work_dir_name)
        return os.path.join("work_dir", cls.work_dir_name)

    # --- what subclasses say -------------------------------------------------------------------
    def build_model(self):
        return instantiate(self.cfg["model"], self.cfg["model_args"], "model_args")

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
        """train_feeder_args for `views` augmented views per clip (SPEC §1.5): augmented by the loader's
        workers, or with `device_augment` on the device in `to_input`."""
        cfg = self.cfg
        return dict(cfg["train_feeder_args"], views=views, augment=not cfg["device_augment"], seed=cfg["seed"])

    def dataset(self, args, what):
        """The feeder for `args`; the skeleton layout defaults to the model's."""
        return instantiate(self.cfg["feeder"], {"layout": self.layout, **args}, what)

    def loader(self, dataset, train):
        """Training: shuffled by (seed, epoch) and split across ranks; evaluation: each clip once."""
        per_rank = (self.cfg["batch_size"] // self.world) if train else self.cfg["test_batch_size"]
        if train and len(dataset) < self.cfg["batch_size"]:  # else no step: an epoch of nothing
            raise ConfigError(f"batch_size {self.cfg['batch_size']} is larger than the {len(dataset)} training clips "
                              f"of {getattr(dataset, 'data_path', 'the training set')}: lower batch_size")
        if train:
            sampler = DistributedSampler(dataset, num_replicas=self.world, rank=get_rank(), shuffle=True,
                                         seed=self.cfg["seed"], drop_last=True)
        else:
            sampler = ShardSampler(len(dataset))
        workers = self.cfg["num_workers"]
        # An own generator: the workers' seeds are never drawn from the global stream (see seed_loaders).
        generator = torch.Generator().manual_seed(loader_seed(self.cfg["seed"], get_rank(), 0))
        # Persistent workers: the feeder's epoch (augmentation seeds) is in shared memory.
        return DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers,
                          pin_memory=self.device.type == "cuda", drop_last=train, persistent_workers=workers > 0,
                          generator=generator, worker_init_fn=release_freed_host_memory)

    def seed_loaders(self, epoch):
        """Reseed every loader's generator for `epoch`: a resumed run's loaders draw what the uninterrupted
        run's drew, and a persistent loader created anew on resume takes nothing from the global stream."""
        for loader in [v for v in vars(self).values() if isinstance(v, DataLoader)]:
            loader.generator.manual_seed(loader_seed(self.cfg["seed"], get_rank(), epoch))

    def clip_loader(self):
        """Every training clip once, un-augmented and in order (kNN bank, BN statistics, cached features);
        built on first use, once."""
        if self.train_clips is None:
            args = dict(self.cfg["train_feeder_args"], views=0)
            self.train_clips = self.loader(self.dataset(args, "train_feeder_args"), train=False)
        return self.train_clips

    def knn(self, encoder, return_features):
        """kNN top-1 (%) of the val clips against the training clips for every k of `knn_k`: the monitor's
        and the standalone protocol (SPEC §3.4, §4); pooled features or the encoder's output."""
        self.check_knn_bank(len(self.clip_loader().dataset))
        bank, bank_labels = self.features(encoder, self.clip_loader(), return_features)
        feats, labels = self.features(encoder, self.val_loader, return_features)
        accs = knn_accuracies(feats, labels, bank, bank_labels, self.cfg["knn_k"])
        return {f"top1_k{k}": 100 * a for k, a in accs.items()}

    def check_knn_bank(self, size):
        """Every k of `knn_k` fits the bank of `size` training clips: a larger k is refused, not capped."""
        too_large = [k for k in self.cfg["knn_k"] if k > size]
        if too_large:
            raise ConfigError(f"knn_k {too_large} is larger than the kNN bank of {size} training clips "
                              f"({self.cfg['train_feeder_args'].get('data_path')}): choose knn_k <= {size}")

    @property
    def layout(self):
        return model_layout(self.cfg["model_args"])

    def to_input(self, x, augment=False):
        """A batch on the device, optionally augmented there (SPEC §1.5), as the configured stream (§1.4)."""
        x = x.to(self.device, non_blocking=True).float()
        if augment:
            x = augment_batch(x, self.generator, **self.train_loader.dataset.augment_args)  # the feeder's settings
        # No memory-format conversion here: channels-last is 4-D only, and the ST-GCN lays its own
        # activations out channels-last from the (N, C, T, V, M) input.
        return to_stream(x, self.cfg["stream"], self.layout)

    def autocast(self):
        amp = self.cfg["amp"]
        if amp == "off":
            return contextlib.nullcontext()
        if amp not in ("bf16", "fp16"):
            raise ConfigError(f"amp must be off, bf16 or fp16, not {amp!r}")
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    @torch.no_grad()
    def features(self, encoder, loader, return_features=True):
        """Encoder outputs and labels of every clip of `loader`, gathered over ranks in dataset order."""
        training = encoder.training
        encoder.eval()
        feats, labels, indices = [], [], []
        for x, y, index in self.progress(loader, "features"):
            x = self.to_input(x)
            with self.autocast():
                feats.append(encoder(x, return_features=return_features).float())
            labels.append(y.to(self.device))
            indices.append(index.to(self.device))
        encoder.train(training)
        local = [torch.cat(t) for t in (feats, labels, indices)] if feats else None
        if self.world > 1:
            # A rank with no clips (fewer clips than ranks) sends None but still takes part in the gather.
            parts = [p for p in all_gather_object(local and [t.cpu() for t in local]) if p is not None]
            local = [torch.cat(t).to(self.device) for t in zip(*parts)]
        if not local:
            where = getattr(loader.dataset, "data_path", type(loader.dataset).__name__)
            raise ValueError(f"{where} holds no clips to evaluate")
        feats, labels, indices = local
        order = torch.argsort(indices)
        check_finite(feats, loader.dataset)
        return feats[order], labels[order].long()

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
            self.seed_loaders(epoch)
            self.epoch, self.step = epoch, 0
            stats = self.train_epoch(epoch)
            self.check_loss()
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
        state = self.rng_state()
        try:
            return self.evaluate(epoch)
        finally:
            self.set_rng_state(state)

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
        barrier()  # rank 0's checkpoints and results exist on every rank's return (a table's next run reads them)

    def optimize(self, loss):
        """Backward, gradient-norm clip (after backward, SPEC §4b) when `grad_clip` is set, SGD step.

        A non-finite loss is noted on the device (reading it every step would wait for the GPU); the
        epoch then ends in `check_loss`, before evaluation and before any checkpoint is written, so the
        last checkpoint stays the last good state.
        """
        self.step += 1
        loss_value = loss.detach().float()
        first = ~torch.isfinite(loss_value) & (self.bad_step == 0)
        self.bad_step = torch.where(first, self.step, self.bad_step)
        self.bad_loss = torch.where(first, loss_value, self.bad_loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.cfg["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def reset_loss_check(self):
        """No non-finite loss seen yet: step 0 (steps count from 1) and its loss, on the device."""
        self.bad_step = torch.zeros((), dtype=torch.long, device=self.device)
        self.bad_loss = torch.zeros((), device=self.device)

    def check_loss(self):
        """Stop at the first non-finite loss of the epoch, naming it, its epoch and step (one read per epoch).

        Every rank reads every rank's flag, so all stop at the same epoch: a rank going on alone would wait
        in its next collective for one that left.
        """
        flags = all_gather_object((int(self.bad_step), float(self.bad_loss)))
        bad = [(rank, step, loss) for rank, (step, loss) in enumerate(flags) if step]
        if bad:
            rank, step, loss = bad[0]
            where = f" on rank {rank}" if len(flags) > 1 else ""
            raise NonFiniteError(f"loss {loss} at epoch {self.epoch + 1}, step {step}{where}: "
                                 f"training stopped; last checkpoint {self.last_checkpoint}")

    def train_batches(self, epoch):
        """The training batches of `epoch`: the train loader, its order and augmentation seeded by the epoch."""
        self.train_loader.sampler.set_epoch(epoch)
        self.train_loader.dataset.set_epoch(epoch)
        return self.train_loader

    def train_epoch(self, epoch):
        self.set_train_mode()
        self.reset_loss_check()
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
        totals = all_reduce_sum(torch.cat([torch.tensor([count], dtype=torch.float64, device=self.device), sums]))
        count, *sums = totals.tolist()
        stats = {f"train/{k}": v / count for k, v in zip(losses, sums)}
        stats["train/samples_per_s"] = count / (time.perf_counter() - t0)
        return stats

    # --- checkpoints ---------------------------------------------------------------------------
    def rng_state(self):
        state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate(),
                     generator=self.generator.get_state())
        if self.device.type == "cuda":  # this rank's GPU only: a resume may see fewer GPUs
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, rng):
        """Every random state from `rng` (as `rng_state` returns it)."""
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.generator.set_state(rng["generator"].cpu())
        restore_cuda_rng(rng.get("cuda"), self.device)

    def save_checkpoint(self, epoch, extra=None):
        """Write `checkpoint_name` atomically: model, optimizer, epoch, config, RNG states and a checksum.

        Called on every rank: each rank's RNG states travel to rank 0, the only writer.
        """
        rng = all_gather_object(self.rng_state())
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
        state = self.read_resume_checkpoint(path)
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when written with amp off or bf16: an fp16 resume starts a new scale
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = state["epoch"]
        # Each rank continues its own random stream when the world size is unchanged.
        per_rank = state.get("rng_per_rank", [state["rng"]])
        self.set_rng_state(per_rank[get_rank()] if len(per_rank) == self.world else state["rng"])
        self.last_checkpoint = path
        self.log(f"resumed from {path} at epoch {self.start_epoch}")
        return state

    def read_resume_checkpoint(self, path):
        """The checkpoint at `path` if this run can continue it; otherwise a one-line error saying why."""
        state = read_checkpoint(path, "resume checkpoint", map_location=self.device)
        keys = {"model", "optimizer", "epoch", "rng"}
        if not isinstance(state, dict) or not keys <= set(state):
            raise ConfigError(f"resume checkpoint {path} is not a training checkpoint of this project "
                              f"(needs keys {sorted(keys)})")
        if state.get("processor", type(self).__name__) != type(self).__name__:
            raise ConfigError(f"resume checkpoint {path} was written by {state['processor']}; "
                              f"this run is {type(self).__name__}")
        self.check_same_run(path, state.get("config") or {})
        check_state_dict(path, self.raw_model.state_dict(), state["model"])
        if state["epoch"] >= self.cfg["num_epoch"]:
            raise ConfigError(f"resume checkpoint {path} is at epoch {state['epoch']}, num_epoch is "
                              f"{self.cfg['num_epoch']}: nothing left to train (raise --num_epoch)")
        later = self.later_checkpoints(state["epoch"])
        if later and not self.cfg["overwrite"]:
            raise ConfigError(f"resume checkpoint {path} is at epoch {state['epoch']} but {self.cfg['work_dir']} "
                              f"holds later ones ({', '.join(later)}), which resuming would replace: resume "
                              "the latest, or give --overwrite true to retrain over them")
        return state

    def check_same_run(self, path, saved):
        """The settings that make a run (RESUME_KEYS) match the checkpoint's config (older ones have none)."""
        for key in RESUME_KEYS:
            if key not in saved:
                continue
            ours, theirs = self.cfg.get(key), saved[key]
            pairs = ({f"{key}.{k}": (ours.get(k), theirs.get(k)) for k in sorted({*ours, *theirs})}
                     if isinstance(ours, dict) and isinstance(theirs, dict) else {key: (ours, theirs)})
            for name, (mine, before) in pairs.items():
                if mine != before:
                    raise ConfigError(f"resume checkpoint {path} was trained with {name} {before!r}, this run has "
                                      f"{mine!r}: resume with the checkpoint's value, or start a new --work_dir")

    def later_checkpoints(self, epoch):
        """Names of this processor's checkpoints in the work_dir written after `epoch`, by epoch."""
        pattern = re.compile(re.escape(self.checkpoint_name).replace(r"\{\}", r"(\d+)"))
        names = os.listdir(self.cfg["work_dir"]) if os.path.isdir(self.cfg["work_dir"]) else []  # rank > 0: none
        found = [(int(m.group(1)), n) for n in names if (m := pattern.fullmatch(n))]
        return [n for e, n in sorted(found) if e > epoch]
