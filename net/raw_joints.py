"""The reference row that needs no network: a linear classifier on the flattened, standardised joints."""
import torch.nn as nn


class Model(nn.Module):
    """Preprocessed clip (N, C, T, V, M) flattened and standardised, then `fc` (an honest baseline, docs/method.md §4).

    The standardisation is a BatchNorm without affine parameters whose running mean and variance linear
    evaluation measures on the training clips (`calibrate_batchnorm`), as for a random encoder; a pretrained
    encoder is only meaningful above this row. Both layers are lazy: their size is that of the first batch,
    so the row needs no frame or body count. The encoder and layout are accepted and unused, so one
    linear-evaluation config serves this row and the encoder rows.

    Args:
        num_class: outputs of `fc`
        encoder: accepted and unused
        layout: accepted and unused
    """

    def __init__(self, num_class=60, encoder=None, layout=None):
        super().__init__()
        self.norm = nn.LazyBatchNorm1d(affine=False)
        self.fc = nn.LazyLinear(num_class)

    def forward(self, x, return_features=False):
        features = self.norm(x.flatten(1))
        return features if return_features else self.fc(features)
