"""The original release's readable ST-GCN forward, on the modules of net/st_gcn.py (SPEC §2).

One reference for two users: the tests compare the fast path of `net.st_gcn` with it (same parameters,
float64), and `tools/benchmark.py --baseline` measures the release's design with it. Tensors are
(N·M, C, T, V) as in the release; every layer is called as the module it is (nn.Dropout included), and
the K subsets are contracted one einsum at a time after the 1x1 convolution. `release_design()` swaps
these functions in for the fast methods of the same classes.
"""
import contextlib

import torch

import net.st_gcn as st_gcn


def graph_conv(self, x, A):
    """1x1 conv to K·out channels on (N, C, T, V), then sum_k x_k A_k, one einsum per subset."""
    x = self.conv(x)
    n, kc, t, v = x.shape
    x = x.view(n, self.num_subsets, kc // self.num_subsets, t, v)
    y = 0
    for k in range(self.num_subsets):
        y = y + torch.einsum("nctv,vw->nctw", x[:, k], A[k])
    return y.contiguous()


def block(self, x, A):
    """tcn (BN, ReLU, 9x1 conv, BN, Dropout) of the graph conv, plus the residual, ReLU."""
    y = self.tcn(self.gcn(x, A))
    if self.residual is not None:
        y = y + self.residual(x)
    return torch.relu(y)


def features_map(self, x):
    """(N, C, T, V, M) -> (N, M, C_out, T', V): data BN on (N·M, V·C, T), then the 10 blocks."""
    n, c, t, v, m = x.shape
    x = x.permute(0, 4, 3, 1, 2).contiguous().view(n * m, v * c, t)
    x = self.data_bn(x)
    x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).contiguous().view(n * m, c, t, v)
    for layer, importance in zip(self.st_gcn_networks, self.edge_importance):
        x = layer(x, self.A * importance)
    return x.view(n, m, *x.shape[1:])


def masked_pool(fmap, mask):
    """Means of fmap (N, M, C, T', V) inside and outside mask ((T', V) or (N, T', V)), over bodies too."""
    n, m, _, t, v = fmap.shape
    inside = mask.to(fmap.dtype).expand(n, t, v)
    p = torch.einsum("nmctv,ntv->nc", fmap, inside) / (m * inside.sum((1, 2))).clamp_min(1)[:, None]
    c = torch.einsum("nmctv,ntv->nc", fmap, 1 - inside) / (m * (1 - inside).sum((1, 2))).clamp_min(1)[:, None]
    return p, c


def forward(self, x, mask=None, return_features=False):
    """`Model.forward`: global (or masked) average pooling, mean over bodies, `fc`.

    A list of G masks is G separate calls on the G equal chunks of the batch, in order: the definition
    the fast path's stacked passes must reproduce.
    """
    if isinstance(mask, list):
        return [forward(self, chunk, group_mask, return_features)
                for chunk, group_mask in zip(x.chunk(len(mask)), mask)]
    fmap = self.features_map(x)
    if mask is None:
        pooled = fmap.mean((3, 4)).mean(1)
        return pooled if return_features else self.fc(pooled)
    p, c = masked_pool(fmap, mask.to(fmap.device))
    return (p, c) if return_features else (self.fc(p), self.fc(c))


@contextlib.contextmanager
def release_design():
    """Run `net.st_gcn`'s classes with the functions above (same modules, parameters and mathematics)."""
    patches = [(st_gcn.GraphConv, "forward", graph_conv), (st_gcn.Block, "forward", block),
               (st_gcn.Model, "features_map", features_map), (st_gcn.Model, "forward", forward)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
