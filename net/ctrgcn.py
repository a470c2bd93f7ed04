"""CTR-GCN encoder (Chen et al., "Channel-wise Topology Refinement Graph Convolution", ICCV 2021).

Written from the paper and its official implementation (Uason-Chen/CTR-GCN, `model/ctrgcn.py`), with the
same parameter and buffer names, so the official state dicts load as they are (`official_state_dict`
drops and names the classifier `fc`). As an encoder it stops where the official model pools: `forward`
maps (N, C, T, V, M) to the last block's feature map (N, M, 4·base_channel, T / 4, V).
"""
import math

import torch
import torch.nn as nn

from net.utils.graph import Graph
from net.utils.layouts import DEFAULT_LAYOUT

CLASSIFIER = ("fc.weight", "fc.bias")  # the official classifier: not part of the encoder


class ChannelTopologyConv(nn.Module):
    """CTR-GC (paper §3.2, Eq. 4-6): one subset's shared topology A refined per channel, then aggregation.

    Joint features x1, x2 (mean over time) give per-channel pairwise relations tanh(x1_u - x2_v), lifted
    to `out` channels by conv4 and added (times `alpha`) to A: Z_c = alpha·Q_c + A. Output at joint u is
    sum_v Z_c[u, v] · x3_c[v], with x3 = conv3(x). The official `CTRGC` class.
    """

    def __init__(self, in_channels, out_channels, rel_reduction=8):
        super().__init__()
        # The official code fixes 8 relation channels for raw coordinates (3 or 9 inputs).
        rel_channels = 8 if in_channels in (3, 9) else in_channels // rel_reduction
        self.conv1 = nn.Conv2d(in_channels, rel_channels, 1)
        self.conv2 = nn.Conv2d(in_channels, rel_channels, 1)
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1)
        self.conv4 = nn.Conv2d(rel_channels, out_channels, 1)

    def forward(self, x, A, alpha):
        """(N, C, T, V), A (V, V), alpha (1,) -> (N, out, T, V)."""
        x1, x2 = self.conv1(x).mean(-2), self.conv2(x).mean(-2)
        relations = torch.tanh(x1.unsqueeze(-1) - x2.unsqueeze(-2))  # (N, R, V, V)
        topology = self.conv4(relations) * alpha + A  # (N, out, V, V)
        return torch.einsum("ncuv,nctv->nctu", topology, self.conv3(x))


class GraphConv(nn.Module):
    """Sum of a CTR-GC per graph subset, BN, plus a (projected) residual, ReLU. The official `unit_gcn`.

    adaptive: the subsets' topology is a learnt parameter `PA` initialised to A (the official default);
    otherwise A is fixed and not saved, as in the official code.
    """

    def __init__(self, in_channels, out_channels, A, adaptive=True):
        super().__init__()
        self.convs = nn.ModuleList(ChannelTopologyConv(in_channels, out_channels) for _ in range(len(A)))
        if in_channels != out_channels:
            self.down = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
        else:
            self.down = nn.Identity()
        if adaptive:
            self.PA = nn.Parameter(A.clone())
        else:
            self.register_buffer("A", A.clone(), persistent=False)
        self.alpha = nn.Parameter(torch.zeros(1))
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        """(N, C, T, V) -> (N, out, T, V)."""
        A = self.PA if hasattr(self, "PA") else self.A
        y = sum(conv(x, A[k], self.alpha) for k, conv in enumerate(self.convs))
        return torch.relu(self.bn(y) + self.down(x))


class ConvBN(nn.Module):
    """A (kernel x 1) temporal convolution, dilated and strided, then BN; padding keeps T / stride.

    The official `TemporalConv` and `unit_tcn` (whose ReLU the official forward never applies).
    """

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, dilation=1):
        super().__init__()
        pad = (kernel_size + (kernel_size - 1) * (dilation - 1) - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, (kernel_size, 1), (stride, 1), (pad, 0), (dilation, 1))
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return self.bn(self.conv(x))


class MultiScaleTemporalConv(nn.Module):
    """Multi-scale temporal modelling (paper §3.4): one branch per dilation, a max-pool branch and a
    strided 1x1 branch, each with out / (len(dilations) + 2) channels, concatenated. The official
    `MultiScale_TemporalConv` with residual=False, as CTR-GCN's blocks build it.
    """

    def __init__(self, in_channels, out_channels, kernel_size=5, stride=1, dilations=(1, 2)):
        super().__init__()
        num_branches = len(dilations) + 2
        if out_channels % num_branches:
            raise ValueError(f"CTR-GCN block width {out_channels} is not a multiple of its "
                             f"{num_branches} temporal branches")
        width = out_channels // num_branches

        def squeeze():  # each branch starts with a 1x1 conv to its width, BN, ReLU
            return [nn.Conv2d(in_channels, width, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        self.branches = nn.ModuleList(
            nn.Sequential(*squeeze(), ConvBN(width, width, kernel_size, stride, dilation)) for dilation in dilations)
        self.branches.append(nn.Sequential(*squeeze(), nn.MaxPool2d((3, 1), (stride, 1), (1, 0)),
                                           nn.BatchNorm2d(width)))
        self.branches.append(nn.Sequential(nn.Conv2d(in_channels, width, 1, (stride, 1)), nn.BatchNorm2d(width)))

    def forward(self, x):
        """(N, C, T, V) -> (N, out, T / stride, V)."""
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class Block(nn.Module):
    """Graph conv, multi-scale temporal conv, plus a residual, ReLU. The official `TCN_GCN_unit`."""

    def __init__(self, in_channels, out_channels, A, stride=1, residual=True, adaptive=True):
        super().__init__()
        self.gcn1 = GraphConv(in_channels, out_channels, A, adaptive)
        self.tcn1 = MultiScaleTemporalConv(out_channels, out_channels, stride=stride)
        if not residual:
            self.residual = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = ConvBN(in_channels, out_channels, 1, stride)

    def forward(self, x):
        y = self.tcn1(self.gcn1(x))
        return torch.relu(y if self.residual is None else y + self.residual(x))


class CTRGCN(nn.Module):
    """CTR-GCN encoder: data BN over (body, joint, coordinate), then 10 blocks `l1`..`l10` (paper §3.5).
    The network around it (net/encoders.py, `Network`) calls `init_weights`, the official initialisation.

    Widths base, base, base, base, 2·base (stride 2), 2·base, 2·base, 4·base (stride 2), 4·base, 4·base.

    Args:
        in_channels: coordinates per joint
        base_channel: width of the first four blocks (the official 64)
        num_person: bodies M per clip; the data BN normalises each body's joints apart (official: 2)
        layout: the skeleton layout of net/utils/layouts.py (its 3-subset graph is the official one)
        adaptive: learn the graph topology `PA` (official default) or keep A fixed
    """

    def __init__(self, in_channels=3, base_channel=64, num_person=2, layout=DEFAULT_LAYOUT, adaptive=True):
        super().__init__()
        if base_channel < 8:  # the blocks' relation convs have in_channels // 8 channels (the official rule)
            raise ValueError(f"CTR-GCN base_channel must be at least 8 (its relation convs have base_channel // 8 "
                             f"channels), got {base_channel}")
        A = torch.tensor(Graph(layout).A, dtype=torch.float32)
        self.num_person, self.num_joints = num_person, A.shape[-1]
        self.data_bn = nn.BatchNorm1d(num_person * in_channels * self.num_joints)
        b = base_channel
        plan = [(in_channels, b, 1), (b, b, 1), (b, b, 1), (b, b, 1), (b, 2 * b, 2), (2 * b, 2 * b, 1),
                (2 * b, 2 * b, 1), (2 * b, 4 * b, 2), (4 * b, 4 * b, 1), (4 * b, 4 * b, 1)]
        for i, (cin, cout, stride) in enumerate(plan):  # named l1..l10 as the official attributes
            self.add_module(f"l{i + 1}", Block(cin, cout, A, stride, residual=i > 0, adaptive=adaptive))
        self.out_channels = 4 * b
        self.temporal_stride = math.prod(stride for _, _, stride in plan)

    def blocks(self):
        return [getattr(self, f"l{i}") for i in range(1, 11)]

    def init_weights(self):
        """The official initialisation: convs Kaiming-normal (fan out) with zero bias; BN weight 1, bias 0,
        but N(1, 0.02) inside the temporal convs and 1e-6 after each graph conv (so a block starts near
        its residual); PA = A, alpha = 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.blocks():
            for module in block.tcn1.modules():
                if isinstance(module, nn.BatchNorm2d):
                    nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.constant_(block.gcn1.bn.weight, 1e-6)

    def forward(self, x):
        """(N, C, T, V, M) -> feature map (N, M, out_channels, T / temporal_stride, V)."""
        n, c, t, v, m = x.shape
        if (v, m) != (self.num_joints, self.num_person):
            raise ValueError(f"CTR-GCN built for V={self.num_joints} joints and M={self.num_person} bodies, "
                             f"got x of shape {tuple(x.shape)}")
        x = x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t)
        x = self.data_bn(x).view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        for block in self.blocks():
            x = block(x)
        return x.view(n, m, *x.shape[1:])


def official_state_dict(state):
    """net/weights.py's hook: an official CTR-GCN state dict (as net/weights.py hands it: the tensors by name,
    `module.` prefixes stripped) in this encoder's keys. Returns (kept, dropped): dropped names the
    classifier keys left out."""
    kept = {k: value for k, value in state.items() if k not in CLASSIFIER}
    return kept, sorted(k for k in state if k in CLASSIFIER)
