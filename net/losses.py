"""The contrastive loss every method and mix shares (docs/method.md §3.1, §3.3)."""
import torch
import torch.nn.functional as F


def info_nce(q, positive, queue, temperature, extra_negative=None):
    """InfoNCE with the positive at index 0: CE([q·pos, q·queue, q·extra]/τ, 0) (docs/method.md §3.1, §3.3)."""
    logits = [(q * positive).sum(1, keepdim=True), q @ queue]
    if extra_negative is not None:
        logits.append((q * extra_negative).sum(1, keepdim=True))
    logits = torch.cat(logits, dim=1) / temperature
    return F.cross_entropy(logits.float(), torch.zeros(len(q), dtype=torch.long, device=q.device))
