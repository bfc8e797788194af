"""JEPA losses between view 1 (last predictor token) and view 2 (last token of the isolated step).

All losses return the mean over pairs; both views receive gradients. They are computed in fp32
because cosine similarities of bf16 vectors near 1 lose most of their digits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("cosine", "l2", "mse", "infonce", "vicreg")


def cosine_loss(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """1 − cos(v1, v2), averaged over pairs (the seed's loss)."""
    return (1.0 - F.cosine_similarity(v1, v2, dim=-1)).mean()


def l2_loss(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """Euclidean distance ‖v1 − v2‖₂, averaged over pairs."""
    return torch.linalg.vector_norm(v1 - v2, dim=-1).mean()


def mse_loss(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """Mean squared error over pairs and dimensions."""
    return F.mse_loss(v1, v2)


def infonce_loss(v1: torch.Tensor, v2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric in-batch InfoNCE: view 1 of pair i must pick view 2 of pair i among all pairs.

    With a single pair there are no negatives and the loss is identically zero, so collapse cannot
    lower it — which is the point: unlike cosine, it is not minimised by making all views equal.
    """
    a = F.normalize(v1, dim=-1)
    b = F.normalize(v2, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def variance_covariance(v: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's anti-collapse terms for one view: hinge on each dimension's std (target 1) plus the
    squared off-diagonal covariance. Zero only when the batch's embeddings are spread and decorrelated,
    so it cannot be satisfied by mapping every step to one vector."""
    if len(v) < 2:
        return v.new_zeros(())
    v = v - v.mean(0)
    std = torch.sqrt(v.var(0) + eps)
    var_term = F.relu(1.0 - std).mean()
    cov = (v.T @ v) / (len(v) - 1)
    off = cov - torch.diag(torch.diag(cov))
    return var_term + off.pow(2).sum() / v.shape[1]


def vicreg_loss(v1: torch.Tensor, v2: torch.Tensor, inv_weight: float = 1.0, reg_weight: float = 1.0) -> torch.Tensor:
    """Invariance (MSE between views) plus the variance/covariance regulariser on both views."""
    return inv_weight * F.mse_loss(v1, v2) + reg_weight * (variance_covariance(v1) + variance_covariance(v2))


def stp_loss(h_s: torch.Tensor, h_r: torch.Tensor, h_t: torch.Tensor) -> torch.Tensor:
    """Semantic Tube Prediction (Huang, LeCun, Balestriero 2026): 1 − cos(h_t − h_r, h_r − h_s), averaged
    over triplets of positions s < r < t of one sequence.

    It asks the hidden-state trajectory to be locally straight: the move from r to t should point
    the way the move from s to r did. It needs no second view and no extra tokens, only three
    hidden states the ordinary forward pass has already computed. Computed in fp32 (differences
    of nearby bf16 states lose most of their digits).
    """
    h_s, h_r, h_t = h_s.float(), h_r.float(), h_t.float()
    return (1.0 - F.cosine_similarity(h_t - h_r, h_r - h_s, dim=-1)).mean()


def gather_views(v: torch.Tensor) -> torch.Tensor:
    """All ranks' views, differentiable, so in-batch negatives span the global batch under DDP."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return v
    from torch.distributed.nn.functional import all_gather

    n = torch.tensor([len(v)], device=v.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    m = int(max(s.item() for s in sizes))
    padded = F.pad(v, (0, 0, 0, m - len(v)))
    parts = all_gather(padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def jepa_loss(v1: torch.Tensor, v2: torch.Tensor, kind: str, temperature: float = 0.1) -> torch.Tensor:
    """Dispatch on the loss name; views are upcast to fp32 first."""
    v1, v2 = v1.float(), v2.float()
    if kind == "cosine":
        return cosine_loss(v1, v2)
    if kind == "l2":
        return l2_loss(v1, v2)
    if kind == "mse":
        return mse_loss(v1, v2)
    if kind == "infonce":
        return infonce_loss(v1, v2, temperature)
    if kind == "vicreg":
        return vicreg_loss(v1, v2)
    raise ValueError(f"unknown jepa loss {kind!r}; choose one of {', '.join(LOSSES)}")


@torch.no_grad()
def view_diagnostics(v1: torch.Tensor, v2: torch.Tensor) -> dict[str, torch.Tensor]:
    """Collapse monitor: how alike the pairs are, how spread the views are, and in-batch retrieval.

    A JEPA loss that falls while `jepa_retrieval_acc` stays at chance (1/P) and the spread shrinks
    means the views collapsed onto a constant instead of predicting the next step. Values are 0-d
    tensors (no device→host sync); the trainer reads them once per logging step.
    """
    v1, v2 = v1.float(), v2.float()
    P = len(v1)
    out = {"jepa_cos": F.cosine_similarity(v1, v2, dim=-1).mean(), "jepa_pairs": torch.tensor(float(P))}
    if P > 1:
        a, b = F.normalize(v1, dim=-1), F.normalize(v2, dim=-1)
        off = ~torch.eye(P, dtype=torch.bool, device=v1.device)
        out["view1_std"] = v1.std(0).mean()
        out["view2_std"] = v2.std(0).mean()
        out["view1_pairwise_cos"] = (a @ a.T)[off].mean()
        out["view2_pairwise_cos"] = (b @ b.T)[off].mean()
        out["jepa_retrieval_acc"] = ((a @ b.T).argmax(1) == torch.arange(P, device=v1.device)).float().mean()
    return out
