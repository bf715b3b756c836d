"""The quality curve: a training run's EMA weights judged every few steps exactly as the `fid` stage judges the
final model, so the curve and the endpoint are one measurement at different times.

One point samples the first `n` of the sample stage's fixed noise vectors (and, for a conditional generator, its
classes i mod K and its guidance: evaluate.guidance), through the same channels-last sampler, and scores them with
the same `Judge` (FID, KID, class entropy, confidence, recognisability; bootstrap intervals) against the reference
stage's features. With `n` equal to evaluate.num_samples the last point *is* the fid stage's figure for those
weights (tested); with fewer samples FID reads higher (its finite-sample bias grows as 1/n) while KID stays unbiased,
so the `real_floor` (held-out real images at the same n) is the curve's own zero.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .generators import channels_last_sampler, class_labels, generate, guidance_for
from .judge import Judge
from .scores import significant


class CurveEvaluator:
    """evaluate(ema) -> {score: value} for trainer.train; `floor` scores held-out real images at the same n."""

    def __init__(self, kind: str, *, judge: Judge, evaluate, samples: int, num_classes: int, image_size: int,
                 seed: int, device: torch.device) -> None:
        self.kind, self.judge, self.ev, self.n = kind, judge, evaluate, samples
        self.k, self.size, self.seed, self.device = num_classes, image_size, seed, device
        self.guidance = guidance_for(kind, num_classes, getattr(evaluate.guidance, kind))
        labels = class_labels(range(samples), num_classes)
        self.labels = None if labels is None else labels.numpy()

    def score(self, images: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
        m = self.judge.score(images, labels, draws=self.ev.bootstrap, seed=self.seed, precision_recall_too=False)
        return {k: significant(v) for k, v in m.items()}

    @torch.no_grad()
    def __call__(self, ema: nn.Module) -> dict[str, float]:
        # A copy: channels-last conversion must not touch the EMA that training keeps updating.
        model = copy.deepcopy(ema).eval()
        sample = channels_last_sampler(self.kind, model, self.ev.ddim_steps, **self.guidance)
        images = generate(sample, self.n, image_size=self.size, seed=self.seed, batch_size=self.ev.batch_size,
                          device=self.device, num_classes=self.k, progress=False)
        scores = self.score(images, self.labels)
        # Undefined without requested classes; present as null so every run's curve file has the same fields
        # (a `dvc plots` chart of it draws nothing instead of failing on a missing field).
        scores.setdefault("recognisability", None)
        return scores

    def floor(self, test_images: np.ndarray, test_labels: np.ndarray | None) -> dict[str, float]:
        """The held-out real images' scores at this n: the best any point of the curve can read."""
        return self.score(test_images[: self.n], None if test_labels is None else test_labels[: self.n])
