"""MAMP's spatio-temporal transformer encoder (Mao et al., "Masked Motion Predictors", ICCV 2023).

Written from the paper and the official implementation (maoyunyao/MAMP, `model/transformer.py`), with
its parameter names, so official checkpoints `{'model': state_dict}` load as they are
(`official_state_dict` drops and names the decoder, mask token and head). Each body's clip is cut into
4-frame patches of one joint: the token grid (T / 4, V) is the feature map's (T', V), as SkeleMix reads
it. `forward` gives the tokens after the final LayerNorm, where the official linear probe pools.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from net.utils.layouts import DEFAULT_LAYOUT, get_layout

ENCODER_PREFIXES = ("joints_embed.", "blocks.", "norm.", "temp_embed", "pos_embed")


class JointEmbed(nn.Module):
    """One token per joint and `t_patch_size` frames: a (t_patch_size x 1) conv of stride t_patch_size.
    The official `SkeleEmbed` (with patch_size 1)."""

    def __init__(self, in_channels, dim, t_patch_size):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, (t_patch_size, 1), (t_patch_size, 1))

    def forward(self, x):
        """(N, C, T, V) -> tokens (N, T / t_patch_size, V, dim)."""
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention over all tokens of a clip (joint and time alike), scale head_dim^-1/2."""

    def __init__(self, dim, num_heads):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MAMP dim_feat {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        """(B, L, dim) -> (B, L, dim)."""
        b, length, dim = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))


class MLP(nn.Module):
    """Linear, GELU, linear."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x)), each branch dropped per
    sample with probability `drop_path` in training (stochastic depth)."""

    def __init__(self, dim, num_heads, mlp_ratio=4, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def dropped(self, y):
        """y with each sample kept with probability 1 - drop_path and rescaled, in training only."""
        if not self.training or self.drop_path == 0:
            return y
        keep = 1 - self.drop_path
        return y * torch.empty(y.shape[0], 1, 1, device=y.device, dtype=y.dtype).bernoulli_(keep) / keep

    def forward(self, x):
        x = x + self.dropped(self.attn(self.norm1(x)))
        return x + self.dropped(self.mlp(self.norm2(x)))


class MAMPTransformer(nn.Module):
    """MAMP's encoder: joint embedding, + spatial and temporal position embeddings, `depth` blocks, LayerNorm.
    The network around it (net/encoders.py, `Network`) calls `init_weights`, the official initialisation.

    Args:
        in_channels: coordinates per joint
        dim_feat: token width, the feature map's channels
        depth, num_heads, mlp_ratio: the transformer's
        num_frames: longest clip; the temporal embedding has num_frames / t_patch_size steps
        layout: the skeleton layout of net/utils/layouts.py: its V joints are V tokens per step
        t_patch_size: frames per token, the temporal stride
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks (fine-tuning: 0.3)
    """

    def __init__(self, in_channels=3, dim_feat=256, depth=8, num_heads=8, mlp_ratio=4, num_frames=120,
                 layout=DEFAULT_LAYOUT, t_patch_size=4, drop_path_rate=0.0):
        super().__init__()
        if num_frames % t_patch_size:
            raise ValueError(f"MAMP num_frames {num_frames} is not a multiple of t_patch_size {t_patch_size}")
        self.joints_embed = JointEmbed(in_channels, dim_feat, t_patch_size)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim_feat, num_heads, mlp_ratio, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim_feat)
        self.temp_embed = nn.Parameter(torch.zeros(1, num_frames // t_patch_size, 1, dim_feat))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, get_layout(layout).num_joints, dim_feat))
        self.out_channels = dim_feat
        self.temporal_stride = t_patch_size

    def init_weights(self):
        """The official initialisation: position embeddings ~ N(0, 0.02) truncated at ±2, linear layers
        Xavier-uniform with zero bias, LayerNorms 1 and 0, the embedding conv PyTorch's default."""
        nn.init.trunc_normal_(self.temp_embed, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        """(N, C, T, V, M) -> feature map (N, M, dim_feat, T / t_patch_size, V)."""
        n, c, t, v, m = x.shape
        steps = t // self.temporal_stride
        if t % self.temporal_stride or steps > self.temp_embed.shape[1] or v != self.pos_embed.shape[2]:
            raise ValueError(f"MAMP encoder takes V={self.pos_embed.shape[2]} joints and T a multiple of "
                             f"{self.temporal_stride} up to {self.temp_embed.shape[1] * self.temporal_stride} "
                             f"frames, got x of shape {tuple(x.shape)}")
        x = self.joints_embed(x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v))
        x = x + self.pos_embed + self.temp_embed[:, :steps]
        x = x.reshape(n * m, steps * v, -1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x.view(n, m, steps, v, -1).permute(0, 1, 4, 2, 3)


def official_state_dict(state):
    """net/weights.py's hook: the state dict of an official MAMP checkpoint `{'model': state_dict}` (pretraining
    or linear / fine-tuning; net/weights.py reads it from under 'model', `module.` prefixes stripped) in this
    encoder's keys. Returns (kept, dropped): dropped names the decoder, mask token and head keys."""
    kept = {k: value for k, value in state.items() if k.startswith(ENCODER_PREFIXES)}
    return kept, sorted(k for k in state if k not in kept)
