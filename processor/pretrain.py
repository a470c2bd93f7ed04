"""Self-supervised pretraining: SkeletonCLR, SkeleMixCLR and SkeleMixCLR+ share this processor (SPEC §3)."""
from processor.metrics import knn_accuracies
from processor.processor import Processor
from torchlight.config import ConfigError


class Pretrain(Processor):
    """MoCo pretraining with a kNN monitor on un-augmented clips every `eval_interval` epochs (SPEC §3.4)."""

    extra_defaults = dict(model="net.moco.MoCo", num_epoch=300, step=[300], knn_k=[10, 20, 40])

    def build_data(self):
        cfg = self.cfg
        queue, batch = self.raw_model.queue_size, cfg["batch_size"]
        if queue % batch:
            # Every rank enqueues the keys of the whole global batch (SPEC §3, §4b).
            raise ConfigError(f"model_args.queue_size {queue} is not divisible by the global batch_size {batch} "
                              f"({self.world} rank(s) x {batch // self.world})")
        args = self.augmented_train_args(self.raw_model.num_queries + 1)
        self.train_loader = self.loader(self.dataset(args, "train_feeder_args"), train=True)
        if cfg["eval_interval"] > 0 and cfg["test_feeder_args"]:
            # SPEC §4b: the kNN bank is the train set without augmentation.
            bank = dict(cfg["train_feeder_args"], views=0)
            self.bank_loader = self.loader(self.dataset(bank, "train_feeder_args"), train=False)
            self.val_loader = self.loader(self.dataset(cfg["test_feeder_args"], "test_feeder_args"), train=False)

    def prepare(self, batch):
        views = batch[0]
        if self.cfg["device_augment"]:  # the feeder sent each clip once: one copy, every view made here
            views = [views[0].to(self.device, non_blocking=True)] * (self.raw_model.num_queries + 1)
        return [self.to_input(v, augment=self.cfg["device_augment"]) for v in views]

    def train_step(self, views):
        return self.model(views, generator=self.generator)

    def evaluate(self, epoch):
        if not hasattr(self, "val_loader"):
            return {}
        encoder = self.raw_model.encoder_q
        bank, bank_labels = self.features(encoder, self.bank_loader)
        feats, labels = self.features(encoder, self.val_loader)
        accs = knn_accuracies(feats, labels, bank, bank_labels, self.cfg["knn_k"])
        return {f"knn/top1_k{k}": 100 * a for k, a in accs.items()}
