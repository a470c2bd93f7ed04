"""ST-GCN encoder at 1/4 width, with the state-dict names of the original release (SPEC §2)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from net.utils.graph import Graph

TEMPORAL_KERNEL = 9


class GraphConv(nn.Module):
    """sum_k (W_k x + b_k) A_k: a 1x1 conv to K·out channels contracted with the K subsets (SPEC §2).

    Computed in the equivalent order sum_k W_k (x A_k) + b_k colsum(A_k): the graph contraction then
    runs on the input channels instead of K·out, about 15% faster for the whole model on CPU. `conv`
    keeps the release's weight layout (out channel k·out + c belongs to subset k).
    """

    def __init__(self, in_channels, out_channels, num_subsets):
        super().__init__()
        self.num_subsets = num_subsets
        self.conv = nn.Conv2d(in_channels, out_channels * num_subsets, kernel_size=1)

    def forward(self, x, A):
        n, c, t, _ = x.shape
        k, w = self.num_subsets, A.shape[-1]
        x = torch.einsum("nctv,kvw->nkctw", x, A).reshape(n, k * c, t, w)
        weight = self.conv.weight.reshape(k, -1, c).transpose(0, 1).reshape(-1, k * c, 1, 1)
        bias = torch.einsum("ko,kw->ow", self.conv.bias.reshape(k, -1), A.sum(1))
        return F.conv2d(x, weight) + bias[:, None, :]


class Block(nn.Module):
    """Graph conv, BN-ReLU-temporal conv-BN-Dropout, plus residual, ReLU (SPEC §2)."""

    def __init__(self, in_channels, out_channels, num_subsets, stride=1, dropout=0.0, residual=True):
        super().__init__()
        self.gcn = GraphConv(in_channels, out_channels, num_subsets)
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, (TEMPORAL_KERNEL, 1), (stride, 1),
                      ((TEMPORAL_KERNEL - 1) // 2, 0)),
            nn.BatchNorm2d(out_channels),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        )
        if not residual:
            self.residual = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, (stride, 1)),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x, A):
        y = self.tcn(self.gcn(x, A))
        if self.residual is not None:
            y = y + self.residual(x)
        return torch.relu(y)


def masked_pool(fmap, mask):
    """Mean feature inside `mask` (p) and outside it (c), each averaged over bodies (SPEC §2, §3.2).

    fmap is (N, M, C, T', V); mask is boolean (T', V) shared by the batch, or (N, T', V).
    Returns p, c of shape (N, C). A region without any position pools to zeros.
    """
    n, m, _, t, v = fmap.shape
    if mask.dtype != torch.bool or tuple(mask.shape[-2:]) != (t, v) or mask.dim() not in (2, 3) \
            or (mask.dim() == 3 and mask.shape[0] != n):
        raise ValueError(f"mask must be boolean (T', V) = ({t}, {v}) or (N, T', V) = ({n}, {t}, {v}), "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    inside = mask.to(fmap.dtype).expand(n, t, v)
    outside = 1 - inside
    # Sum over bodies and positions in one contraction, then divide by M·(positions in the region).
    p = torch.einsum("nmctv,ntv->nc", fmap, inside) / (m * inside.sum((1, 2))).clamp_min(1)[:, None]
    c = torch.einsum("nmctv,ntv->nc", fmap, outside) / (m * outside.sum((1, 2))).clamp_min(1)[:, None]
    return p, c


class Model(nn.Module):
    """ST-GCN: data BN, 10 graph blocks, global average pooling, mean over bodies, `fc` (SPEC §2)."""

    def __init__(self, in_channels=3, hidden_channels=16, hidden_dim=256, num_class=60, graph_args=None,
                 edge_importance_weighting=True, dropout=0.5, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"unknown ST-GCN argument(s) {sorted(kwargs)}")
        self.graph = Graph(**(graph_args or {"layout": "ntu-rgb+d", "strategy": "spatial"}))
        self.register_buffer("A", torch.tensor(self.graph.A, dtype=torch.float32))
        num_subsets, num_joints = self.A.shape[:2]
        h = hidden_channels
        # (in, out, temporal stride) per block; block 0 has no residual and no dropout.
        plan = [(in_channels, h, 1), (h, h, 1), (h, h, 1), (h, h, 1), (h, 2 * h, 2), (2 * h, 2 * h, 1),
                (2 * h, 2 * h, 1), (2 * h, 4 * h, 2), (4 * h, 4 * h, 1), (4 * h, hidden_dim, 1)]
        self.temporal_stride = 1
        for _, _, stride in plan:
            self.temporal_stride *= stride

        self.data_bn = nn.BatchNorm1d(in_channels * num_joints)
        self.st_gcn_networks = nn.ModuleList(
            Block(cin, cout, num_subsets, stride, dropout=dropout if i else 0.0, residual=i > 0)
            for i, (cin, cout, stride) in enumerate(plan))
        self.fc = nn.Linear(hidden_dim, num_class)
        if edge_importance_weighting:
            self.edge_importance = nn.ParameterList(
                nn.Parameter(torch.ones_like(self.A)) for _ in self.st_gcn_networks)
        else:
            self.edge_importance = [1] * len(self.st_gcn_networks)
        self.init_weights()

    def init_weights(self):
        """Conv/linear weights ~ N(0, 0.02), biases 0; BN weights ~ N(1, 0.02), biases 0 (SPEC §2)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)
        if isinstance(self.edge_importance, nn.ParameterList):
            for importance in self.edge_importance:
                nn.init.ones_(importance)

    def features_map(self, x):
        """(N, C, T, V, M) -> final feature map (N, M, C_out, T / temporal_stride, V) (SPEC §2)."""
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 3, 1, 2).reshape(n * m, v * c, t)
        x = self.data_bn(x)
        x = x.reshape(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        for block, importance in zip(self.st_gcn_networks, self.edge_importance):
            x = block(x, self.A * importance)
        return x.reshape(n, m, *x.shape[1:])

    def forward(self, x, mask=None, return_features=False):
        """Pooled features through `fc`: (N, num_class); with `mask`, (fc(p), fc(c)) (SPEC §2).

        return_features=True skips `fc` and returns the pooled (N, hidden_dim) feature(s).
        """
        fmap = self.features_map(x)
        if mask is None:
            pooled = fmap.mean((1, 3, 4))
            return pooled if return_features else self.fc(pooled)
        p, c = masked_pool(fmap, mask.to(fmap.device))
        return (p, c) if return_features else (self.fc(p), self.fc(c))
