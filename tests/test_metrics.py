"""Accuracy measures against hand counts (processor/metrics.py)."""
import math

import torch

from processor.metrics import confusion_matrix, knn_accuracies, knn_predict, per_class_accuracy, topk_accuracy


def test_topk_and_per_class_against_hand_counts():
    scores = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
    labels = torch.tensor([0, 2, 1, 0])
    assert topk_accuracy(scores, labels, 1) == 0.5          # clips 0 and 2
    assert topk_accuracy(scores, labels, 2) == 1.0          # clip 1: 2 is second; clip 3: 0 ties second
    conf = confusion_matrix(scores.argmax(1), labels, 3)
    assert conf.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 0]]
    acc = per_class_accuracy(conf)
    assert acc[:2] == [0.5, 1.0] and acc[2] == 0.0
    assert math.isnan(per_class_accuracy(torch.zeros(2, 2, dtype=torch.long))[0])


def test_knn_vote_weights():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    bank_labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.2]])
    sims = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    expected = torch.zeros(1, 2)
    for i in sims[0].topk(2).indices:                        # the two most similar: bank 0 and 2
        expected[0, bank_labels[i]] += math.exp(sims[0, i] / 0.1)
    assert torch.allclose(knn_predict(q, bank, bank_labels, 2, k=2), expected)
    # one exact class-1 neighbour against two close class-0 neighbours: k decides
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05]])
    accs = knn_accuracies(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), bank, torch.tensor([1, 0, 0]), [1, 3])
    assert accs == {1: 0.0, 3: 1.0}
