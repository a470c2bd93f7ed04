"""ST-GCN encoder at 1/4 width, with the state-dict names of the original release (docs/method.md §2).

The forward written here is the paper's; `kernels: fast` (the default) runs the same modules through
`net/st_gcn_fast.py` instead, the same function computed faster.
"""
import torch
import torch.nn as nn

from net import st_gcn_fast
from net.encoders import init_like_release
from net.utils.graph import Graph
from net.utils.layouts import DEFAULT_LAYOUT

TEMPORAL_KERNEL = 9
KERNELS = ("fast", "reference")  # encoder.kernels: net/st_gcn_fast.py, or the forward written here


class GraphConv(nn.Module):
    """sum_k (W_k x + b_k) A_k: a 1x1 conv to K·out channels contracted with the K subsets (docs/method.md §2).

    `conv` keeps the release's weight layout (out channel k·out + c belongs to subset k).
    """

    def __init__(self, in_channels, out_channels, num_subsets):
        super().__init__()
        self.num_subsets = num_subsets
        self.conv = nn.Conv2d(in_channels, out_channels * num_subsets, kernel_size=1)

    def forward(self, x, A):
        """(N, C, T, V) -> (N, out, T, V)."""
        x = self.conv(x)
        n, kc, t, v = x.shape
        x = x.view(n, self.num_subsets, kc // self.num_subsets, t, v)
        return sum(torch.einsum("nctv,vw->nctw", x[:, k], A[k]) for k in range(self.num_subsets)).contiguous()


class Block(nn.Module):
    """Graph conv, BN-ReLU-temporal conv-BN-Dropout, plus residual, ReLU (docs/method.md §2)."""

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
        """(N, C, T, V) -> (N, out, T / stride, V)."""
        y = self.tcn(self.gcn(x, A))
        if self.residual is not None:
            y = y + self.residual(x)
        return torch.relu(y)


class STGCN(nn.Module):
    """ST-GCN as an encoder (net/encoders.py): data BN and 10 graph blocks, (N, C, T, V, M) -> (N, M, C', T / 4, V)
    (docs/method.md §2). Pooling and heads are the wrapper's (`net.encoders.Network`).

    Args:
        in_channels: coordinates per joint
        hidden_channels: channels of the first blocks (x2 after the first stride, x4 after the second)
        hidden_dim: channels of the feature map (out_channels)
        layout: the skeleton layout whose 3-subset graph the blocks convolve on
        edge_importance_weighting: a learnt weight per graph edge and block
        dropout: dropout probability in every block but the first
        kernels: fast (net/st_gcn_fast.py) | reference (the forward written here): same function
    """

    def __init__(self, in_channels=3, hidden_channels=16, hidden_dim=256, layout=DEFAULT_LAYOUT,
                 edge_importance_weighting=True, dropout=0.5, kernels="fast"):
        super().__init__()
        if kernels not in KERNELS:
            raise ValueError(f"encoder.kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
        self.kernels, self.out_channels = kernels, hidden_dim
        self.graph = Graph(layout)
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
        if edge_importance_weighting:
            self.edge_importance = nn.ParameterList(
                nn.Parameter(torch.ones_like(self.A)) for _ in self.st_gcn_networks)
        else:
            self.edge_importance = [1] * len(self.st_gcn_networks)

    def init_weights(self):
        """The release's initialisation (`init_like_release`) and edge weights 1; the wrapper calls it once its
        head exists, as the release initialised encoder and head together (a seed gives the release's weights)."""
        init_like_release(self)
        if isinstance(self.edge_importance, nn.ParameterList):
            for importance in self.edge_importance:
                nn.init.ones_(importance)

    def forward(self, x):
        """(N, C, T, V, M) -> feature map (N, M, hidden_dim, T / temporal_stride, V) (docs/method.md §2)."""
        if self.kernels == "fast":
            return st_gcn_fast.feature_groups(self, x).squeeze(4).permute(1, 2, 4, 3, 0)
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 3, 1, 2).contiguous().view(n * m, v * c, t)  # data BN over (joint, coordinate)
        x = self.data_bn(x)
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).contiguous().view(n * m, c, t, v)
        for block, importance in zip(self.st_gcn_networks, self.edge_importance):
            x = block(x, self.A * importance)
        return x.view(n, m, *x.shape[1:])

    def forward_stacked(self, x, groups):
        """The contract's optional stacked passes: x stacks `groups` passes group-major; their maps stacked
        (G, N, M, C', T', V), BatchNorm statistics per pass. The fast kernels run them as one call."""
        if self.kernels == "fast":
            return st_gcn_fast.feature_groups(self, x, groups).permute(4, 1, 2, 5, 3, 0)
        return torch.stack([self(clips) for clips in x.chunk(groups)])
