"""Self-supervised pretraining: SkeletonCLR, SkeleMixCLR and SkeleMixCLR+ share this processor (docs/method.md §3)."""
import math

from net.moco import auto_queue_size, cosine_momentum
from processor.features import check_knn_bank
from processor.processor import Processor
from torchlight.config import ConfigError

MOMENTUM_SCHEDULES = ("constant", "cosine")


def near_chance(loss_over_chance, keys_seen, queue_size, refills=20, margin=0.03):
    """Whether training looks stuck: the queue refilled `refills` times and the loss within `margin` of chance.

    20 refills: a healthy small run (config/ucla/*_small.yaml) spends its first ~14 near chance.
    """
    return keys_seen >= refills * queue_size and loss_over_chance > 1 - margin


class Pretrain(Processor):
    """MoCo pretraining with a kNN monitor on un-augmented clips every `eval_interval` epochs (docs/method.md §3.4).

    It reads only the model's documented interface (net/moco.py's MoCo: `num_queries`, `queue_size`,
    `momentum`, `chance_losses()`, `forward(views, generator, momentum, mix_weight)` and its dict of losses).
    """

    is_monitor = True
    extra_defaults = dict(method=None, model="net.methods.pretraining_model", num_epoch=300, step=[300],
                          knn_k=[10, 20, 40], num_steps=None, momentum_schedule="constant", mix_warmup=0.0)
    extra_help = dict(method="skeletonclr | skelemixclr | skelemixclr_plus: its preset of model_args sits "
                             "between these defaults and the config",
                      knn_k="the k of the kNN monitor's top-1 accuracies",
                      num_steps="train this many optimiser steps: num_epoch is derived from the data (null: num_epoch)",
                      momentum_schedule="constant | cosine: key momentum rising from model_args.momentum to 1",
                      mix_warmup="the mixes' losses weigh progress / mix_warmup until this share of training (0: off)")

    def build_model(self):
        """MoCo; `model_args.queue_size: auto` is sized from the training clips (auto_queue_size)."""
        cfg = self.cfg
        if cfg["momentum_schedule"] not in MOMENTUM_SCHEDULES:
            raise ConfigError(f"momentum_schedule must be one of {', '.join(MOMENTUM_SCHEDULES)}, "
                              f"not {cfg['momentum_schedule']!r}")
        if not 0 <= cfg["mix_warmup"] <= 1:
            raise ConfigError(f"mix_warmup must be a share of training in [0, 1], got {cfg['mix_warmup']!r}")
        if cfg["model_args"].get("queue_size") == "auto":
            clips = len(self.dataset(dict(cfg["train_feeder_args"], views=0), "train_feeder_args"))
            cfg["model_args"]["queue_size"] = auto_queue_size(clips, cfg["batch_size"])
            self.log(f"queue_size auto: {cfg['model_args']['queue_size']} keys for {clips} training clips")
        return super().build_model()

    def build_data(self):
        cfg = self.cfg
        queue, batch = self.raw_model.queue_size, cfg["batch_size"]
        if not isinstance(queue, int) or queue < batch:
            raise ConfigError(f"model_args.queue_size {queue!r} must be at least the global batch_size {batch}")
        if queue % batch:
            # Every rank enqueues the keys of the whole global batch (docs/method.md §3, §4b).
            raise ConfigError(f"model_args.queue_size {queue} is not divisible by the global batch_size {batch} "
                              f"({self.world} rank(s) x {batch // self.world})")
        self.views_per_clip = self.raw_model.num_queries + 1  # the query views and the key view of every clip
        args = self.augmented_train_args(self.views_per_clip)
        self.train_loader = self.loader(self.dataset(args, "train_feeder_args"), train=True)
        if cfg["eval_interval"] > 0 and cfg["test_feeder_args"]:
            # docs/method.md §4b: the kNN bank is the train set without augmentation (ordered_train_loader).
            self.val_loader = self.loader(self.dataset(cfg["test_feeder_args"], "test_feeder_args"), train=False)
            # Before training, not at the first monitor.
            check_knn_bank(cfg["knn_k"], len(self.train_loader.dataset), cfg["train_feeder_args"].get("data_path"))
        if cfg["num_steps"] is not None:
            if not isinstance(cfg["num_steps"], int) or cfg["num_steps"] < 1:
                raise ConfigError(f"num_steps must be an integer >= 1, got {cfg['num_steps']!r}")
            cfg["num_epoch"] = math.ceil(cfg["num_steps"] / len(self.train_loader))
            self.log(f"num_steps {cfg['num_steps']}: {cfg['num_epoch']} epochs of {len(self.train_loader)} steps")

    def compile_targets(self):
        """The two encoders: SkeleMix's region draws and the queue pointer stay eager instead of recompiling
        for every new draw."""
        return [self.raw_model.encoder_q, self.raw_model.encoder_k]

    def prepare(self, batch):
        views = batch[0]
        if self.cfg["device_augment"]:  # the feeder sent each clip once: one copy, every view made here
            views = [views[0].to(self.device, non_blocking=True)] * self.views_per_clip
        return [self.to_input(v, augment=self.cfg["device_augment"]) for v in views]

    def train_step(self, views):
        """The model's losses; the schedules are arguments of its forward (the key momentum, the mixes' weight)."""
        cfg, steps = self.cfg, len(self.train_loader)
        progress = (self.epoch * steps + self.step_in_epoch) / (cfg["num_epoch"] * steps)
        momentum = cosine_momentum(self.raw_model.momentum, progress) if cfg["momentum_schedule"] == "cosine" else None
        mix_weight = min(1.0, progress / cfg["mix_warmup"]) if cfg["mix_warmup"] else 1.0
        return self.model(views, generator=self.generator, momentum=momentum, mix_weight=mix_weight)

    def train_epoch(self, epoch):
        """The shared epoch, with the health signals under `health/`."""
        stats = super().train_epoch(epoch)
        stats = {k.replace("train/health/", "health/"): v for k, v in stats.items()}
        # Against chance, the parts the model returns and their unweighted total (during mix_warmup train/loss
        # is the ramped one, which would understate it).
        chance = {k: v for k, v in self.raw_model.chance_losses().items() if f"train/{k}" in stats}
        if not chance:
            return stats
        for key, value in chance.items():
            stats[f"health/{key}_over_chance"] = stats[f"train/{key}"] / value
        ratio = stats["health/loss_over_chance"] = sum(stats[f"train/{k}"] for k in chance) / sum(chance.values())
        keys_seen = (epoch + 1) * len(self.train_loader) * self.cfg["batch_size"]
        if near_chance(ratio, keys_seen, self.raw_model.queue_size):
            self.log(f"warning: epoch {epoch + 1}: loss {stats['train/loss']:.4g} is {100 * ratio:.1f}% of its chance "
                     f"value, after the queue was refilled {keys_seen // self.raw_model.queue_size} times: the "
                     "encoder is not learning (docs/experiments.md)")
        return stats

    def evaluate(self, epoch):
        """kNN monitor on the query encoder's output after the projection head, as the release's monitor
        (docs/method.md §3.4): its logs compare with the release's."""
        if self.val_loader is None:
            return {}
        accs = self.knn(self.raw_model.encoder_q, pooled=False)
        return {f"knn/{k}": v for k, v in accs.items()}
