"""ST-GCN encoder at 1/4 width, with the state-dict names of the original release (docs/method.md §2).

The forward written here is the paper's; `kernels: fast` (the default) runs the same modules through
`net/st_gcn_fast.py` instead, the same function computed faster.
"""
import torch
import torch.nn as nn

from net import st_gcn_fast
from net.utils.graph import Graph
from net.utils.layouts import DEFAULT_LAYOUT

TEMPORAL_KERNEL = 9
KERNELS = ("fast", "reference")  # model_args.kernels: net/st_gcn_fast.py, or the forward written here


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


def masked_pool(fmap, mask):
    """Mean feature inside `mask` (p) and outside it (c), each averaged over bodies (docs/method.md §2, §3.2).

    fmap is (N, M, C, T', V); mask is boolean (T', V) shared by the batch, or (N, T', V).
    Returns p, c of shape (N, C). A region without any position pools to zeros.
    """
    n, m, _, t, v = fmap.shape
    inside = mask.to(torch.promote_types(fmap.dtype, torch.float32)).expand(n, t, v)  # exact counts in bf16

    def mean_over(region):
        # Weights 1 / (M·positions in the region): the product sums x / count, the mean, in the map's dtype;
        # summing first would overflow fp16 (800 positions of mean activation 82 exceed 65504).
        weights = region / (m * region.sum((1, 2), keepdim=True)).clamp_min(1)
        return torch.einsum("nmctv,ntv->nc", fmap, weights.to(fmap.dtype))

    return mean_over(inside), mean_over(1 - inside)


class Model(nn.Module):
    """ST-GCN: data BN, 10 graph blocks, global average pooling, mean over bodies, `fc` (docs/method.md §2).

    `forward` gives class scores (or pooled features); `forward_masked` the pooled features inside and
    outside a SkeleMix region; `forward_grouped` several passes (a query and its mixes) in one call.

    Args:
        in_channels: coordinates per joint
        hidden_channels: channels of the first blocks (x2 after the first stride, x4 after the second)
        hidden_dim: size of the pooled features
        num_class: outputs of `fc` (classes; the projection head's size under MoCo)
        graph_args: the skeleton graph: {layout: ntu-rgb+d | kinect-v1 | ..., strategy: spatial}
        edge_importance_weighting: a learnt weight per graph edge and block
        dropout: dropout probability in every block but the first
        kernels: fast (net/st_gcn_fast.py) | reference (the forward written here): same function
    """

    def __init__(self, in_channels=3, hidden_channels=16, hidden_dim=256, num_class=60, graph_args=None,
                 edge_importance_weighting=True, dropout=0.5, kernels="fast"):
        super().__init__()
        if kernels not in KERNELS:
            raise ValueError(f"model_args.kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
        self.kernels = kernels
        self.graph = Graph(**(graph_args or {"layout": DEFAULT_LAYOUT, "strategy": "spatial"}))
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
        """Conv/linear weights ~ N(0, 0.02), biases 0; BN weights ~ N(1, 0.02), biases 0 (docs/method.md §2)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                if module.affine:
                    nn.init.normal_(module.weight, 1.0, 0.02)
                    nn.init.zeros_(module.bias)
        if isinstance(self.edge_importance, nn.ParameterList):
            for importance in self.edge_importance:
                nn.init.ones_(importance)

    def features_map(self, x):
        """(N, C, T, V, M) -> final feature map (N, M, C_out, T / temporal_stride, V) (docs/method.md §2)."""
        if self.kernels == "fast":
            return st_gcn_fast.feature_groups(self, x).squeeze(4).permute(1, 2, 4, 3, 0)
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 3, 1, 2).contiguous().view(n * m, v * c, t)  # data BN over (joint, coordinate)
        x = self.data_bn(x)
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).contiguous().view(n * m, c, t, v)
        for block, importance in zip(self.st_gcn_networks, self.edge_importance):
            x = block(x, self.A * importance)
        return x.view(n, m, *x.shape[1:])

    def pooled_passes(self, x, masks):
        """Pooled features of G = len(masks) passes stacked group-major along x's batch (G·N clips): per pass,
        the global mean (N, hidden_dim) where its mask is None, else (p, c) = `masked_pool`.

        The G passes compute what G separate calls would, BatchNorm statistics and running-statistics
        updates included, in group order (the fast kernels stack them into one call).
        """
        self.check_masks(x, masks)
        if self.kernels == "fast":
            return st_gcn_fast.pooled_passes(self, x, masks)
        pooled = []
        for clips, mask in zip(x.chunk(len(masks)), masks):
            fmap = self.features_map(clips)
            pooled.append(fmap.mean((3, 4)).mean(1) if mask is None else masked_pool(fmap, mask.to(fmap.device)))
        return pooled

    def check_masks(self, x, masks):
        """Errors naming the value for a batch that does not split into the passes or a mask of the wrong shape."""
        gn, _, t, v, _ = x.shape
        n, t = gn // len(masks), -(-t // self.temporal_stride)  # every stride pads: T' = ceil(T / stride)
        if n * len(masks) != gn:
            raise ValueError(f"a batch of {gn} clips does not split into {len(masks)} passes")
        for mask in masks:
            if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape[-2:]) != (t, v)
                                     or mask.dim() not in (2, 3) or (mask.dim() == 3 and mask.shape[0] != n)):
                raise ValueError(f"mask must be boolean (T', V) = ({t}, {v}) or (N, T', V) = ({n}, {t}, {v}), "
                                 f"got {mask.dtype} {tuple(mask.shape)}")

    def forward(self, x, return_features=False):
        """(N, C, T, V, M) -> `fc` of the pooled features, (N, num_class); return_features: the pooled
        (N, hidden_dim) features themselves."""
        (pooled,) = self.pooled_passes(x, [None])
        return pooled if return_features else self.fc(pooled)

    def forward_masked(self, x, mask, return_features=False):
        """(fc(p), fc(c)) of the features pooled inside and outside `mask` (T', V) or (N, T', V)
        (docs/method.md §3.2); return_features: (p, c) themselves."""
        ((p, c),) = self.pooled_passes(x, [mask])
        return (p, c) if return_features else (self.fc(p), self.fc(c))

    def forward_grouped(self, x, masks, return_features=False):
        """G passes in one call: x stacks them group-major (G·N clips) and masks holds one entry per pass,
        None (`forward`'s output) or a mask (`forward_masked`'s). Returns the list of the G outputs, as G
        separate calls would, `fc` applied per pass in order."""
        head = nn.Identity() if return_features else self.fc
        return [tuple(map(head, pooled)) if isinstance(pooled, tuple) else head(pooled)
                for pooled in self.pooled_passes(x, masks)]

    def compile(self, *args, **kwargs):
        """nn.Module.compile compiles `forward` only: the named passes are compiled too."""
        super().compile(*args, **kwargs)
        self.forward_masked = torch.compile(self.forward_masked, *args, **kwargs)
        self.forward_grouped = torch.compile(self.forward_grouped, *args, **kwargs)
