"""Encoder outputs of a whole dataset, gathered over ranks in dataset order, and the kNN protocol on them:
shared by the evaluations and the pretraining monitor (docs/method.md §3.4, §4)."""
import torch

from processor.metrics import knn_accuracies
from processor.nonfinite import check_finite
from torchlight.config import ConfigError
from torchlight.dist import all_gather_object, get_world_size


@torch.no_grad()
def encode_batches(encoder, batches, to_input, autocast, pooled):
    """(outputs, labels, indices) of this rank's `batches` of (clip, label, index), or None without any:
    `pooled`, the backbone's pooled features; else the encoder's last layer (class scores, projection head)."""
    training = encoder.training
    encoder.eval()
    outputs, labels, indices = [], [], []
    for x, y, index in batches:
        x = to_input(x)
        with autocast():
            outputs.append(encoder(x, return_features=pooled).float())
        # Asynchronous: on CUDA the loader pins every batch, so the copy overlaps the next batch's work.
        labels.append(y.to(x.device, non_blocking=True))
        indices.append(index.to(x.device, non_blocking=True))
    encoder.train(training)
    return [torch.cat(t) for t in (outputs, labels, indices)] if outputs else None


def in_dataset_order(local, dataset, device):
    """(outputs, labels) of every clip of `dataset` from each rank's `encode_batches`, in dataset order."""
    if get_world_size() > 1:
        # A rank with no clips (fewer clips than ranks) sends None but still takes part in the gather.
        parts = [p for p in all_gather_object(local and [t.cpu() for t in local]) if p is not None]
        local = [torch.cat(t).to(device) for t in zip(*parts)]
    if not local:
        where = getattr(dataset, "data_path", type(dataset).__name__)
        raise ValueError(f"{where} holds no clips to evaluate")
    outputs, labels, indices = local
    order = torch.argsort(indices)
    check_finite(outputs, dataset)
    return outputs[order], labels[order].long()


def knn_top1(bank, bank_labels, feats, labels, knn_k):
    """kNN top-1 (%) of `feats` against the bank for every k of `knn_k`, named top1_k<k> (docs/method.md §3.4)."""
    accs = knn_accuracies(feats, labels, bank, bank_labels, knn_k)
    return {f"top1_k{k}": 100 * a for k, a in accs.items()}


def check_knn_bank(knn_k, size, data_path):
    """Every k of `knn_k` fits the bank of `size` training clips: a larger k is refused, not capped."""
    too_large = [k for k in knn_k if k > size]
    if too_large:
        raise ConfigError(f"knn_k {too_large} is larger than the kNN bank of {size} training clips "
                          f"({data_path}): choose knn_k <= {size}")
