"""Self-supervised pretraining: SkeletonCLR, SkeleMixCLR and SkeleMixCLR+ share this processor (SPEC §3)."""
from processor.processor import Processor
from torchlight.config import ConfigError


def near_chance(loss_over_chance, keys_seen, queue_size, refills=20, margin=0.03):
    """Whether training looks stuck: the queue refilled `refills` times and the loss within `margin` of chance.

    20 refills: a healthy small run (config/ucla/*_small.yaml) spends its first ~14 near chance.
    """
    return keys_seen >= refills * queue_size and loss_over_chance > 1 - margin


class Pretrain(Processor):
    """MoCo pretraining with a kNN monitor on un-augmented clips every `eval_interval` epochs (SPEC §3.4)."""

    is_monitor = True
    extra_defaults = dict(method=None, model="net.moco.MoCo", num_epoch=300, step=[300], knn_k=[10, 20, 40])

    def build_data(self):
        cfg = self.cfg
        queue, batch = self.raw_model.queue_size, cfg["batch_size"]
        if not isinstance(queue, int) or queue < batch:
            raise ConfigError(f"model_args.queue_size {queue!r} must be at least the global batch_size {batch}")
        if queue % batch:
            # Every rank enqueues the keys of the whole global batch (SPEC §3, §4b).
            raise ConfigError(f"model_args.queue_size {queue} is not divisible by the global batch_size {batch} "
                              f"({self.world} rank(s) x {batch // self.world})")
        args = self.augmented_train_args(self.raw_model.num_queries + 1)
        self.train_loader = self.loader(self.dataset(args, "train_feeder_args"), train=True)
        if cfg["eval_interval"] > 0 and cfg["test_feeder_args"]:
            # SPEC §4b: the kNN bank is the train set without augmentation (clip_loader).
            self.val_loader = self.loader(self.dataset(cfg["test_feeder_args"], "test_feeder_args"), train=False)
            self.check_knn_bank(len(self.train_loader.dataset))  # before training, not at the first monitor

    def compile_targets(self):
        """The two encoders: SkeleMix's region draws and the queue pointer stay eager instead of recompiling
        for every new draw."""
        return [self.raw_model.encoder_q, self.raw_model.encoder_k]

    def prepare(self, batch):
        views = batch[0]
        if self.cfg["device_augment"]:  # the feeder sent each clip once: one copy, every view made here
            views = [views[0].to(self.device, non_blocking=True)] * (self.raw_model.num_queries + 1)
        return [self.to_input(v, augment=self.cfg["device_augment"]) for v in views]

    def train_step(self, views):
        return self.model(views, generator=self.generator)

    def train_epoch(self, epoch):
        """The shared epoch, with the health signals of issue 10 item 2 under `health/`."""
        stats = super().train_epoch(epoch)
        stats = {k.replace("train/health/", "health/"): v for k, v in stats.items()}
        for key, chance in self.raw_model.chance_losses().items():
            stats[f"health/{key}_over_chance"] = stats[f"train/{key}"] / chance
        keys_seen = (epoch + 1) * len(self.train_loader) * self.cfg["batch_size"]
        ratio = stats["health/loss_over_chance"]
        if near_chance(ratio, keys_seen, self.raw_model.queue_size):
            self.log(f"warning: epoch {epoch + 1}: loss {stats['train/loss']:.4g} is {100 * ratio:.1f}% of its chance "
                     f"value, after the queue was refilled {keys_seen // self.raw_model.queue_size} times: the "
                     "encoder is not learning (README: Is pretraining learning?)")
        return stats

    def evaluate(self, epoch):
        """kNN monitor on the query encoder's output after the projection head, as the release's monitor
        (SPEC §3.4): its logs compare with the release's."""
        if self.val_loader is None:
            return {}
        accs = self.knn(self.raw_model.encoder_q, return_features=False)
        return {f"knn/{k}": v for k, v in accs.items()}
