"""The judge of generated images, as one object the `fid` and `guidance` stages share: the reference features and
extractor the `reference` stage fixed, the evaluator's class head where there is one, and the scores with their
bootstrap intervals (scores.py) plus precision/recall. One implementation, so every figure is comparable."""
from __future__ import annotations

import numpy as np
import torch

from .evaluator import load_evaluator
from .files import read_json
from .fidelity import load_reference_features, precision_recall, reference_features
from .scores import reference_stats, scores_with_intervals


class Judge:
    def __init__(self, eval_dir: str, *, device: str, batch_size: int) -> None:
        space = read_json(f"{eval_dir}/extractor.json")
        self.space = space
        self.kw = {"extractor": space["extractor"], "weights_path": space["weights"]}
        self.device, self.batch_size = device, batch_size
        self.phi_ref = load_reference_features(f"{eval_dir}/reference.npz", **self.kw)
        # Scores on the device: at paper scale (50k samples, 2048-d Inception features) the bootstrap wants a GPU.
        self.ref = reference_stats(torch.from_numpy(self.phi_ref).to(device))
        # Recognisability needs the evaluator's classes; Inception's are ImageNet's, not the dataset's.
        self.head = None
        if self.kw["extractor"] == "evaluator":
            self.head = load_evaluator(torch.load(space["weights"], weights_only=True)).head.to(device)

    def score(self, images: np.ndarray, labels: np.ndarray | None, *, draws: int, seed: int,
              precision_recall_too: bool = True) -> dict[str, float]:
        """FID, KID, class entropy, confidence and (with the requested classes `labels`) recognisability, each
        with its bootstrap 95% interval (`draws` resamples), and precision/recall, of uint8 NHWC images."""
        phi = reference_features(images, batch_size=self.batch_size, device=self.device, **self.kw)  # (N, D)
        phi_t = torch.from_numpy(phi).to(self.device)
        with torch.no_grad():
            logits = None if self.head is None else self.head(phi_t)  # (N, K)
        lab = None if labels is None else torch.from_numpy(np.asarray(labels)).to(self.device)
        m = scores_with_intervals(phi_t, self.ref, logits=logits, labels=lab, draws=draws, seed=seed)
        if precision_recall_too:
            m.update(precision_recall(phi, self.phi_ref))
        return m
