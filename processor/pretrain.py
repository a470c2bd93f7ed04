"""Self-supervised pretraining: SkeletonCLR, SkeleMixCLR and SkeleMixCLR+ share this processor (SPEC §3)."""
from processor.metrics import knn_accuracies
from processor.processor import Processor
from torchlight.config import ConfigError


def near_chance(loss_over_chance, keys_seen, queue_size, refills=20, margin=0.03):
    """Whether training looks stuck: the queue refilled `refills` times and the loss within `margin` of chance.

    20 refills: a healthy small run (config/ucla/*_small.yaml) spends its first ~14 near chance.
    """
    return keys_seen >= refills * queue_size and loss_over_chance > 1 - margin


class Pretrain(Processor):
    """MoCo pretraining with a kNN monitor on un-augmented clips every `eval_interval` epochs (SPEC §3.4)."""

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
            # SPEC §4b: the kNN bank is the train set without augmentation.
            self.bank_loader = self.clip_loader()
            self.val_loader = self.loader(self.dataset(cfg["test_feeder_args"], "test_feeder_args"), train=False)

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
        if not hasattr(self, "val_loader"):
            return {}
        encoder = self.raw_model.encoder_q
        bank, bank_labels = self.features(encoder, self.bank_loader)
        feats, labels = self.features(encoder, self.val_loader)
        accs = knn_accuracies(feats, labels, bank, bank_labels, self.cfg["knn_k"])
        return {f"knn/top1_k{k}": 100 * a for k, a in accs.items()}
