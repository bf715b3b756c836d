"""Evaluator classifier: the feature space for FID/KID/precision-recall on datasets Inception cannot judge.

For the procedural `shapes` data and user `folder` data, ImageNet Inception features are meaningless (and not
available offline), so we train a small CNN on the dataset's own labels and use its penultimate (pooled) features,
in the spirit of the "domain-specific classifier" FIDs used for MNIST-like data. It is a separate network trained
from scratch: it never shares weights with the drift encoder, so the generator is not judged in the space it was
trained to match.

A trained evaluator is one plain dict `{"config": {...}, "model": state_dict}` (torch.save-able, weights_only-safe).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .generators import to_float
from .rules import positive


@dataclass(frozen=True)
class EvaluatorConfig:
    num_classes: int
    image_size: int
    width: int = 32  # architecture constant; feature_dim = 4 * width

    @property
    def feature_dim(self) -> int:
        return 4 * self.width


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    # BatchNorm, not GroupNorm: per-sample normalisation hides amplitude, so noise images would look "normal"
    # (measured: FID(noise)/FID(real) ~1200 with GroupNorm vs ~3600 with BatchNorm, blur 6x vs 16x). Features are
    # only read in eval mode, where BN uses running statistics and a sample never depends on its batch.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class Evaluator(nn.Module):
    """Small CNN classifier; `features` are the globally pooled activations before the linear head."""

    def __init__(self, config: EvaluatorConfig):
        super().__init__()
        self.config = config
        w = config.width
        # Downsample in the stem: shapes are large, and full-resolution layers would dominate CPU time.
        self.body = nn.Sequential(
            _conv_block(3, w, 2),
            _conv_block(w, w, 1),
            _conv_block(w, 2 * w, 2),
            _conv_block(2 * w, 2 * w, 1),
            _conv_block(2 * w, 4 * w, 2),
            _conv_block(4 * w, 4 * w, 1),
        )
        self.head = nn.Linear(4 * w, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (N, 3, H, W) in [-1, 1] -> penultimate features (N, feature_dim)."""
        return self.body(x).mean(dim=(2, 3))  # (N, 4w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, num_classes) logits


def load_evaluator(state: dict) -> Evaluator:
    """Rebuild an evaluator (eval mode, no grad) from the plain dict returned by `train_evaluator`."""
    net = Evaluator(EvaluatorConfig(**state["config"]))
    net.load_state_dict(state["model"])
    return net.eval().requires_grad_(False)


# uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]: the same scaling the generators are trained in.
images_to_tensor = to_float


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip + random crop after reflect padding, per sample; x (N, C, H, W)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (N, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
    # Advanced indices around the channel slice put the indexed dims first: (N, H, W, C).
    return xp[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def _accuracy(net: Evaluator, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: str) -> float:
    correct = 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        correct += int((net(xb.to(device)).argmax(1).cpu() == yb).sum())
    return correct / max(1, len(y))


def validate(evaluator) -> None:
    """The `evaluate.evaluator` section (a config.EvaluatorParams)."""
    for name in ("steps", "batch_size", "lr"):
        positive(getattr(evaluator, name), f"evaluate.evaluator.{name}")


def train_evaluator(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str,
    width: int = 32,
    val_fraction: float = 0.1,
    progress: bool = True,
) -> tuple[dict, dict]:
    """Train an evaluator classifier on uint8 (N, H, W, 3) images with int64 (N,) labels.

    A `val_fraction` of the data is held out (seeded) to report accuracy. Deterministic on CPU given `seed`.
    Returns (state, metrics): state is `{"config", "model"}`; metrics has train_loss, train_accuracy,
    val_accuracy, val_samples, steps.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square, got {images.shape[1:3]}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(images),) or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be int [N] in [0, {num_classes}), got shape {labels.shape}")

    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(images), generator=g)
    n_val = int(len(images) * val_fraction)
    x = images_to_tensor(images)  # (N, 3, H, W)
    y = torch.from_numpy(labels)
    x_val, y_val = x[perm[:n_val]], y[perm[:n_val]]
    x_tr, y_tr = x[perm[n_val:]], y[perm[n_val:]]

    config = EvaluatorConfig(num_classes=num_classes, image_size=images.shape[1], width=width)
    # Initialise under a forked global RNG so the caller's torch RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Evaluator(config).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    # Cosine decay to zero: the evaluator is trained once, to convergence, for a fixed step budget.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))

    net.train()
    tail_losses: list[float] = []  # mean over the last 10% of steps: less noisy than the last batch
    for step in tqdm(range(steps), disable=not progress, desc="evaluator", leave=False):
        idx = torch.randint(0, len(x_tr), (batch_size,), generator=g)
        xb = augment(x_tr[idx], g).to(device)  # (B, 3, H, W)
        loss = F.cross_entropy(net(xb), y_tr[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail_losses.append(loss.item())

    net.eval()
    state = {"config": asdict(config), "model": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    metrics = {
        "train_loss": float(np.mean(tail_losses)) if tail_losses else float("nan"),
        "train_accuracy": _accuracy(net, x_tr[:2000], y_tr[:2000], 256, device),
        "val_accuracy": _accuracy(net, x_val, y_val, 256, device) if n_val else float("nan"),
        "val_samples": n_val,
        "steps": steps,
    }
    return state, metrics
