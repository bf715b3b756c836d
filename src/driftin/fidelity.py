"""Sample quality: FID, KID and precision/recall via torch-fidelity, in Inception or evaluator feature space.

Design:
- Feature extractors are torch-fidelity extractors instantiated by registered name, exactly as `calculate_metrics`
  does: `inception-v3-compat` (cifar10) or `driftin-evaluator` (shapes/folder; see `driftin.evaluator`). Trained
  weights reach either one through torch-fidelity's own `feature_extractor_weights_path` kwarg: for the evaluator it
  is the file holding the plain dict from `train_evaluator` (`torch.save(state, path)`). So
  `torch_fidelity.calculate_metrics(feature_extractor="driftin-evaluator", feature_extractor_weights_path=...)`
  works too once `register_evaluator_extractor()` has run (every function here that needs it calls it).
- torch-fidelity is imported on first use, not with this module: every stage imports this module to validate
  params, and torch-fidelity's import (all of torchvision) costs ~3.5 s of each stage's start-up.
- FID and KID are `driftin.scores` (pure functions of features that also give bootstrap intervals; equal to
  torch-fidelity's, tested), precision/recall torch-fidelity's, applied to feature arrays (`fidelity_from_features`).
- Reference features are a plain array, not torch-fidelity's cache: its cache key ignores the weights (a retrained
  evaluator would silently reuse stale features) and a DVC stage needs a declared output file. `reference_features`
  extracts them (and optionally writes an .npz tagged with the extractor id = name + weights hash);
  `load_reference_features` refuses a file made by other weights; `compute_fidelity` takes either reference images
  or those features. With `cache_dir`, features of reference images are cached there, content-addressed by
  (extractor id, images).
- Inception weights come from `evaluate.inception_weights`, else torch.hub's cache, where they are downloaded from
  torch-fidelity's URL when its host answers; offline that fails in seconds with where to put the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import functools

import numpy as np
import torch

from driftin.downloads import host_reachable
from driftin.evaluator import load_evaluator
from driftin.files import file_digest, save_npz
from driftin.rules import positive, require
from driftin.scores import fid, kernel_sums, kid, reference_stats

EVALUATOR_EXTRACTOR = "driftin-evaluator"
INCEPTION_EXTRACTOR = "inception-v3-compat"
# torch-fidelity's own download URL (its URL_INCEPTION_V3; a test checks the two agree).
URL_INCEPTION_V3 = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                    "weights-inception-2015-12-05-6726825d.pth")
# Basename of torch-fidelity's download URL, i.e. the file torch.hub would cache under <hub>/checkpoints/.
INCEPTION_WEIGHTS_FILE = URL_INCEPTION_V3.rsplit("/", 1)[-1]
INCEPTION_PARAMS_KEY = "evaluate.inception_weights"
# k of the k-NN precision/recall (Kynkaanniemi et al.): each sample's radius is its distance to the k-th nearest
# other sample of its set, so every set of images compared needs at least k + 1 of them.
PRC_NEIGHBORHOOD = 3
MIN_SAMPLES = PRC_NEIGHBORHOOD + 1
_EXTRACTORS = {"inception": (INCEPTION_EXTRACTOR, "2048"), "evaluator": (EVALUATOR_EXTRACTOR, "features")}


class InceptionWeightsUnavailable(FileNotFoundError):
    """The Inception weights file is missing and we refuse to download (offline, and no implicit home writes)."""


@functools.cache
def register_evaluator_extractor() -> type:
    """Define the torch-fidelity extractor around a trained `Evaluator` and register it as "driftin-evaluator"
    (once); returns the class."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.helpers import vassert
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    class EvaluatorFeatureExtractor(FeatureExtractorBase):
        """torch-fidelity extractor around a trained `Evaluator`, loaded from `feature_extractor_weights_path`."""

        def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                     **kwargs):
            super().__init__(name, features_list)
            vassert(feature_extractor_weights_path is not None,
                    f'"{name}" needs feature_extractor_weights_path: '
                    "a file saved with torch.save(train_evaluator(...)[0])")
            state = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
            self.evaluator = load_evaluator(state)
            self.requires_grad_(False)
            self.eval()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            vassert(x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3,
                    f"Expecting uint8 Bx3xHxW, got {x.shape}")
            size = self.evaluator.config.image_size
            vassert(x.shape[2:] == (size, size), f"Evaluator was trained at {size}x{size}, got {tuple(x.shape[2:])}")
            x = x.float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1], the evaluator's training range
            phi = self.evaluator.features(x)  # (B, D)
            out = {"features": phi, "logits": self.evaluator.head(phi)}
            return tuple(out[k] for k in self.features_list)

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return "logits" if metric == "isc" else "features"

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    if EVALUATOR_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EVALUATOR_EXTRACTOR, EvaluatorFeatureExtractor)
    return FEATURE_EXTRACTORS_REGISTRY[EVALUATOR_EXTRACTOR]


def __getattr__(name: str):
    """`fidelity.EvaluatorFeatureExtractor` stays available (PEP 562), defined on first access."""
    if name == "EvaluatorFeatureExtractor":
        return register_evaluator_extractor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_weights(extractor: str, weights_path: str | None) -> str:
    """Return an existing weights file for `extractor`, or fail fast (no download attempt)."""
    if extractor not in _EXTRACTORS:
        raise ValueError(f"extractor must be one of {sorted(_EXTRACTORS)}, got {extractor!r}")
    if extractor == "evaluator":
        if weights_path is None or not Path(weights_path).is_file():
            raise FileNotFoundError(f"evaluator weights not found: {weights_path!r} (train it with train_evaluator)")
        return str(weights_path)
    return str(inception_weights_file(weights_path))


def inception_weights_file(weights_path: str | None, *, download: bool = True) -> Path | None:
    """torch-fidelity's Inception weights: `weights_path`, else torch.hub's cache, else downloaded there from
    torch-fidelity's URL when its host answers (download=False: None, "downloadable"). Offline it fails in
    seconds, naming the file, where it is expected and how to supply it."""
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    candidate = Path(weights_path) if weights_path is not None else hub_file
    if candidate.is_file():
        return candidate
    reason = (f"`{INCEPTION_PARAMS_KEY}` names a missing file" if weights_path is not None
              else host_reachable(URL_INCEPTION_V3))
    if reason is None:
        if not download:
            return None
        hub_file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(hub_file))
        return hub_file
    raise InceptionWeightsUnavailable(
        f"Inception weights {INCEPTION_WEIGHTS_FILE} not found at {candidate} ({reason}). Offline, download it "
        f"elsewhere from {URL_INCEPTION_V3} and either set `{INCEPTION_PARAMS_KEY}: /path/to/"
        f"{INCEPTION_WEIGHTS_FILE}` in params.yaml (the weights_path argument) or copy it to {hub_file}."
    )


def extractor_id(extractor: str, weights_path: str | None) -> str:
    """'name:sha256[:16] of the weights' - identifies the feature space, to reject features from other weights."""
    return f"{_EXTRACTORS[extractor][0]}:{file_digest(resolve_weights(extractor, weights_path))[:16]}"


def validate(evaluate, test_samples: int) -> None:
    """The `evaluate` section's set sizes (a config.EvaluateConfig), with data.test_samples: the fid stage compares
    evaluate.num_samples generated images, the first evaluate.num_samples held-out ones and
    evaluate.reference_samples training images."""
    for name in ("num_samples", "reference_samples", "batch_size", "bootstrap"):
        positive(getattr(evaluate, name), f"evaluate.{name}")
    why = f"precision/recall measure each image's distance to its {PRC_NEIGHBORHOOD} nearest neighbours in its set"
    for key, n in (("evaluate.num_samples", evaluate.num_samples), ("data.test_samples", test_samples),
                   ("evaluate.reference_samples", evaluate.reference_samples)):
        require(n >= MIN_SAMPLES, key, f"must be at least {MIN_SAMPLES}, got {n}: {why}")


def images_needed() -> tuple[int, str]:
    """Fewest images of a prepared split the fid stage can use, and why."""
    return MIN_SAMPLES, f"the fid stage compares sets of at least {MIN_SAMPLES} images ({PRC_NEIGHBORHOOD}-NN " \
                        "precision/recall)"


def _check_images(images: np.ndarray, what: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{what} must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")


@torch.no_grad()
def reference_features(reference: np.ndarray, *, extractor: str, weights_path: str | None, batch_size: int,
                       device: str, path: str | None = None) -> np.ndarray:
    """Features float32 [M, D] of uint8 [M, H, W, 3] images; also written to `path` (.npz, atomic) if given."""
    _check_images(reference, "images")
    weights = resolve_weights(extractor, weights_path)
    from torch_fidelity.utils import create_feature_extractor

    register_evaluator_extractor()
    name, layer = _EXTRACTORS[extractor]
    net = create_feature_extractor(name, [layer], cuda=False, verbose=False,
                                   feature_extractor_weights_path=weights).to(device)
    x = torch.from_numpy(np.ascontiguousarray(reference)).permute(0, 3, 1, 2)  # uint8 (M, 3, H, W)
    feats = np.concatenate([net(xb.to(device))[0].float().cpu().numpy() for xb in x.split(batch_size)])
    if path is not None:
        save_npz(path, features=feats, extractor_id=np.array(extractor_id(extractor, weights_path)))
    return feats  # (M, D)


def load_reference_features(path: str, *, extractor: str, weights_path: str | None) -> np.ndarray:
    """Load features written by `reference_features(..., path=)`; reject ones made by another extractor/weights."""
    with np.load(path) as f:
        stored, feats = str(f["extractor_id"]), f["features"]
    expected = extractor_id(extractor, weights_path)
    if stored != expected:
        raise ValueError(f"{path} holds features of {stored}, but the extractor is {expected}: recompute them")
    return feats


def precision_recall(phi_gen: np.ndarray, phi_ref: np.ndarray,
                     prc_neighborhood: int = PRC_NEIGHBORHOOD) -> dict[str, float]:
    """Precision and recall (Kynkaanniemi et al.) of features [N, D] (generated) against [M, D] (reference)."""
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    n, m = len(phi_gen), len(phi_ref)
    if phi_gen.ndim != 2 or phi_ref.ndim != 2 or phi_gen.shape[1] != phi_ref.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D], got {phi_gen.shape} and {phi_ref.shape}")
    if not 1 <= prc_neighborhood < min(n, m):
        raise ValueError(f"prc_neighborhood={prc_neighborhood} must be in [1, {min(n, m) - 1}] for {n} generated "
                         f"and {m} reference samples")
    f_gen = torch.from_numpy(np.ascontiguousarray(phi_gen, dtype=np.float32))  # (N, D)
    f_ref = torch.from_numpy(np.ascontiguousarray(phi_ref, dtype=np.float32))  # (M, D)
    # torch-fidelity's convention: input1 = generated, input2 = real. save_cpu_ram -> blockwise distances.
    prc = prc_features_to_metric(f_gen, f_ref, prc_neighborhood=prc_neighborhood, save_cpu_ram=True, verbose=False)
    return {"precision": prc[KEY_METRIC_PRECISION], "recall": prc[KEY_METRIC_RECALL]}


def fidelity_from_features(phi_gen: np.ndarray, phi_ref: np.ndarray, *,
                           prc_neighborhood: int = PRC_NEIGHBORHOOD) -> dict[str, float]:
    """FID, KID and precision/recall from features [N, D] (generated) and [M, D] (reference); no intervals (for
    those, `driftin.scores.scores_with_intervals`)."""
    pr = precision_recall(phi_gen, phi_ref, prc_neighborhood)
    ref, g = reference_stats(phi_ref), torch.from_numpy(np.asarray(phi_gen))
    return {"fid": fid(g, ref), "kid": kid(kernel_sums(g, ref)), **pr}


def compute_fidelity(generated: np.ndarray, reference: np.ndarray, *, extractor: str, weights_path: str | None,
                     prc_neighborhood: int = PRC_NEIGHBORHOOD, batch_size: int, device: str,
                     cache_dir: str | None = None, cache_key: str = "reference") -> dict[str, float]:
    """Metrics of uint8 [N, H, W, 3] generated images against a reference set.

    `reference` is either uint8 images [M, H, W, 3] or their float features [M, D] from `reference_features` /
    `load_reference_features`. For reference images and a `cache_dir`, their features are cached in
    `<cache_dir>/<cache_key>-<hash of extractor id and images>.npz` and reused on later calls.
    Returns {fid, kid, precision, recall}.
    """
    _check_images(generated, "generated")
    resolve_weights(extractor, weights_path)  # fail fast, before any work
    if reference.ndim == 2 and np.issubdtype(reference.dtype, np.floating):
        phi_ref = reference
    else:
        _check_images(reference, "reference")
        phi_ref = _cached_reference_features(reference, extractor=extractor, weights_path=weights_path,
                                             batch_size=batch_size, device=device, cache_dir=cache_dir,
                                             cache_key=cache_key)
    phi_gen = reference_features(generated, extractor=extractor, weights_path=weights_path, batch_size=batch_size,
                                 device=device)
    return fidelity_from_features(phi_gen, phi_ref, prc_neighborhood=prc_neighborhood)


def _cached_reference_features(reference: np.ndarray, *, extractor: str, weights_path: str | None, batch_size: int,
                               device: str, cache_dir: str | None, cache_key: str) -> np.ndarray:
    kwargs = dict(extractor=extractor, weights_path=weights_path, batch_size=batch_size, device=device)
    if cache_dir is None:
        return reference_features(reference, **kwargs)
    key = hashlib.sha256(extractor_id(extractor, weights_path).encode())
    key.update(str(reference.shape).encode())
    key.update(np.ascontiguousarray(reference).data)
    path = os.path.join(cache_dir, f"{cache_key}-{key.hexdigest()[:16]}.npz")
    if os.path.exists(path):
        return load_reference_features(path, extractor=extractor, weights_path=weights_path)
    return reference_features(reference, path=path, **kwargs)
