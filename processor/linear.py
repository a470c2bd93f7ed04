"""Linear evaluation: a frozen encoder and a new linear classifier, optionally on cached features and with
the normalised probe (docs/method.md §4)."""
import torch
import torch.nn.functional as F

from net.weights import CLASSIFIER_KEYS
from processor.evaluation import Classification

# The normalised probe (docs/method.md): linear evaluation on standardised features, at an lr for
# standardised inputs. It trains every row, raw joints and random encoder included, the same way.
PROBE = dict(feature_norm=True, base_lr=0.1)


class LinearEvaluation(Classification):
    """Frozen encoder in eval mode, a new linear classifier (docs/method.md §4).

    With un-augmented training clips the encoder's output per clip never changes, so by default
    (`cache_features`) it is computed once and the classifier trains on the cached features in the
    shared loop, with the same optimiser, schedule and batch order as the full path. With `augment`
    every epoch sees new clips, and the encoder runs every step (the full path).
    """

    extra_defaults = dict(Classification.extra_defaults, base_lr=3.0, weight_decay=0.0, step=[80],
                          num_epoch=150, cache_features=True, feature_norm=False)
    extra_help = dict(Classification.extra_help, cache_features="without augment: encode the training clips once",
                      feature_norm="the normalised probe: the classifier's input standardised with the training "
                                   "clips' feature statistics (docs/method.md §4)")
    work_dir_name = "linear"

    @classmethod
    def protocol_folder(cls, cfg):
        """`probe` for the normalised probe: its results never replace the paper protocol's in `linear`."""
        return "probe" if cfg.get("feature_norm") else cls.work_dir_name

    def __init__(self, cfg):
        self.cached = None  # (features, labels) of the training clips, on the cached path
        self.frozen = {}    # the encoder's state before training: finish() checks that none of it moved
        super().__init__(cfg)

    def build_model(self):
        model = super().build_model()
        for name, p in model.named_parameters():
            p.requires_grad = name in CLASSIFIER_KEYS
        return model

    def set_train_mode(self):
        self.model.eval()  # BN statistics and dropout of the frozen encoder stay fixed (docs/method.md §4)

    def start(self):
        if not self.cfg["weights"] and not self.start_epoch:
            self.calibrate_random_encoder(self.raw_model)
        if self.cfg["feature_norm"]:
            self.standardize_features()
        # a resumed run's come from its checkpoint
        self.frozen = {k: v.clone() for k, v in self.raw_model.state_dict().items() if k not in CLASSIFIER_KEYS}
        super().start()

    def training_features(self):
        """(features, labels) of every training clip, un-augmented: computed once and kept on the cached path."""
        if self.cached is not None:
            return self.cached
        features = self.encode(self.raw_model, self.ordered_train_loader, pooled=True)
        if self.uses_cache:
            self.cached = features
        return features

    def standardize_features(self):
        """The normalised probe: the classifier sees each feature standardised with the mean and variance of
        the training clips' features, a BatchNorm without affine parameters measured once (MAE's linear
        probe; docs/method.md). Every row, raw joints and random encoder included, trains the same way.

        Done by a forward pre-hook on `fc`, so the cached path, the full path and evaluation all see it and
        the checkpoint's keys stay those of the paper protocol; the statistics are measured again on resume.
        """
        features, _ = self.training_features()
        mean, var = features.mean(0), features.var(0, correction=0)
        scale = torch.rsqrt(var + 1e-6)
        self.raw_model.fc.register_forward_pre_hook(lambda _, args: ((args[0] - mean) * scale,))
        self.log(f"feature_norm: the classifier's {len(mean)} input features standardised with the training "
                 "clips' statistics (normalised probe)")

    @property
    def uses_cache(self):
        return self.cfg["cache_features"] and not self.cfg["augment"]

    def build_data(self):
        super().build_data()
        if self.cfg["cache_features"] and not self.uses_cache:
            self.log("augment is on: the encoder runs on every batch (no feature cache)")

    def train_batches(self, epoch):
        """Cached path: (features, labels, indices) of the global batches the full path would visit."""
        if not self.uses_cache:
            return super().train_batches(epoch)
        feats, labels = self.training_features()
        # Every rank holds all features and runs the global batch, so no gradient sync is needed.
        order = torch.as_tensor(self.global_order(epoch), device=self.device)
        batch = self.cfg["batch_size"]
        return [(feats[i], labels[i], i) for i in order[:len(order) // batch * batch].split(batch)]

    def prepare(self, batch):
        return batch[:2] if self.uses_cache else super().prepare(batch)

    def train_step(self, inputs):
        if not self.uses_cache:
            return super().train_step(inputs)
        x, y = inputs
        return {"loss": F.cross_entropy(self.raw_model.fc(x).float(), y)}

    def global_order(self, epoch):
        """The indices the full path visits in `epoch`, all ranks' batches interleaved as one global batch."""
        per_rank = []
        for rank in range(self.world):
            s = type(self.train_loader.sampler)(self.train_loader.dataset, num_replicas=self.world, rank=rank,
                                                shuffle=True, seed=self.cfg["seed"], drop_last=True)
            s.set_epoch(epoch)
            per_rank.append(list(s))
        b = self.cfg["batch_size"] // self.world
        n_batches = len(per_rank[0]) // b
        return [i for j in range(n_batches) for r in per_rank for i in r[j * b:(j + 1) * b]]

    def finish(self):
        moved = [k for k, v in self.raw_model.state_dict().items()
                 if k in self.frozen and not torch.equal(v.cpu(), self.frozen[k].cpu())]
        if moved:
            raise RuntimeError(f"frozen encoder weights changed during linear evaluation: {moved[:5]}")
        super().finish()
