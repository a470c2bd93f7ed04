"""Accuracy measures shared by every processor: top-k, per-class, confusion matrix and kNN (docs/method.md §3.4, §4)."""
import torch
import torch.nn.functional as F


def topk_accuracy(scores, labels, k):
    """Fraction of clips whose label is among the k highest scores."""
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean().item()


def confusion_matrix(pred, labels, num_classes):
    """C[i, j] = number of clips of class i predicted as j."""
    return torch.bincount(labels * num_classes + pred, minlength=num_classes ** 2).view(num_classes, -1)


def per_class_accuracy(confusion):
    """Diagonal over row sums; NaN for classes without clips."""
    confusion = confusion.double()
    return (confusion.diag() / confusion.sum(1)).tolist()


def knn_predict(feats, bank, bank_labels, num_classes, k, temperature=0.1):
    """Class scores from the k most cosine-similar bank features, votes weighted by exp(sim/0.1)
    (docs/method.md §3.4)."""
    sim = F.normalize(feats, dim=1) @ F.normalize(bank, dim=1).T
    sim, idx = sim.topk(min(k, len(bank)), dim=1)
    votes = F.one_hot(bank_labels[idx], num_classes).float() * (sim / temperature).exp()[..., None]
    return votes.sum(1)


def knn_accuracies(feats, labels, bank, bank_labels, ks, chunk=1024):
    """Top-1 kNN accuracy for every k in `ks`, computed in chunks of queries to bound memory."""
    num_classes = int(max(labels.max(), bank_labels.max())) + 1
    correct = dict.fromkeys(ks, 0)
    for i in range(0, len(feats), chunk):
        for k in ks:
            pred = knn_predict(feats[i:i + chunk], bank, bank_labels, num_classes, k).argmax(1)
            correct[k] += (pred == labels[i:i + chunk]).sum().item()
    return {k: c / len(feats) for k, c in correct.items()}
