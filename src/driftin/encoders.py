"""Frozen feature encoders for the drift loss: images [B, 3, H, W] in [-1, 1] -> maps from several depths.

Every encoder is frozen (eval mode that `.train()` cannot undo, no parameter gradients) but differentiable with
respect to its input: the drift loss backpropagates through it into the generator. Pretrained weights come from
a local file when given, else from the usual cache; a missing file fails in seconds with `WeightsUnavailable`
saying where to put it, instead of the hubs' minute-long retry loops on an offline machine.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from .downloads import env_true, host_reachable
from .mae import GN_GROUPS, mae_encoder_from_state
from .rules import choice, require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_MODEL = "vit_base_patch14_dinov2.lvd142m"
DINOV2_HF_REPO = "timm/vit_base_patch14_dinov2.lvd142m"
DINOV2_FILE = "model.safetensors"
DINOV2_BLOCKS = (2, 5, 8, 11)  # 0-based: patch tokens after blocks 3, 6, 9 and 12 of ViT-B


class WeightsUnavailable(FileNotFoundError):
    """Pretrained weights are neither in a local file nor in the cache, and cannot be downloaded."""


class FrozenEncoder(nn.Module):
    """Base: parameters frozen, always in eval mode (BatchNorm must never switch to batch statistics)."""

    def freeze(self) -> FrozenEncoder:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        return super().train(False)


def _imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> ImageNet-normalised inputs."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


def _unavailable(what: str, file_name: str, expected: Path | str, reason: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"{what} weights '{file_name}' are not at {expected} and cannot be downloaded ({reason}). Offline: copy "
        f"'{file_name}' to {expected}, or set the encoder's `weights` param to a local path of the file."
    )


def _local_weights(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailable(f"{what} weights file {p} does not exist (the encoder's `weights` param)")
    return p


class PixelEncoder(FrozenEncoder):
    """The seed's failing baseline: raw pixels and a 2x average-pooled copy as the 'feature maps'."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, F.avg_pool2d(x, 2)]  # (B, 3, H, W), (B, 3, H/2, W/2)


class ResNet18Encoder(FrozenEncoder):
    """ImageNet ResNet-18 with its stem adapted to 32x32 inputs; maps after layer1..layer4.

    conv1 runs at stride 1 and the max-pool is dropped, so a 32x32 image gives layer1..4 maps of 32/16/8/4 px:
    the same grid sizes (and cost of layers 1-4) as the stock stem on a 4x upsampled 128 px input, without
    the interpolation and with a 16x cheaper stem. The pretrained filters are kept unchanged.
    """

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18()
        net.load_state_dict(state)
        net.conv1.stride = (1, 1)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(_imagenet_normalise(x))  # (B, 64, H, W)
        maps = []
        for layer in self.layers:
            h = layer(h)
            maps.append(h)  # (B, 64|128|256|512, H|H/2|H/4|H/8, ...)
        return maps


def _resnet18_url() -> str:
    from torchvision.models import ResNet18_Weights

    return ResNet18_Weights.IMAGENET1K_V1.url


def resnet18_weights_file(weights: str | None) -> Path | None:
    """The ResNet-18 file to load: `weights`, else torchvision's hub cache; None when it is not there but the
    download host answers (torchvision then downloads it). Raises WeightsUnavailable otherwise, in seconds."""
    if weights is not None:
        return _local_weights(weights, "resnet18")
    url = _resnet18_url()
    file_name = os.path.basename(urlparse(url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name  # honours TORCH_HOME at call time
    if cached.is_file():
        return cached
    reason = host_reachable(url)
    if reason is not None:
        raise _unavailable("resnet18 ImageNet", file_name, cached, reason)
    return None


def resnet18_state(weights: str | None) -> dict[str, torch.Tensor]:
    """ResNet-18 ImageNet state dict from `weights` (a local file) or torchvision's hub cache (downloaded there
    when missing and the host answers)."""
    file = resnet18_weights_file(weights)
    if file is not None:
        return torch.load(file, map_location="cpu", weights_only=True)
    return torch.hub.load_state_dict_from_url(_resnet18_url(), map_location="cpu", check_hash=True,
                                              weights_only=True)


class DINOv2Encoder(FrozenEncoder):
    """DINOv2 ViT (timm) on inputs upsampled to `resize` px; maps = patch tokens of several blocks."""

    def __init__(self, vit: nn.Module, resize: int, blocks: Sequence[int]) -> None:
        super().__init__()
        self.vit, self.resize, self.blocks = vit, resize, list(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Bicubic upsampling as in the best CIFAR port: DINOv2 never saw 32 px images.
        x = F.interpolate(x, size=(self.resize, self.resize), mode="bicubic", align_corners=False)
        x = _imagenet_normalise(x)  # (B, 3, r, r)
        return self.vit.forward_intermediates(x, indices=self.blocks, output_fmt="NCHW",
                                              intermediates_only=True)  # each (B, D, r/14, r/14)


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment now (huggingface_hub fixes it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface" / "hub"


def dinov2_weights_file(weights: str | None, *, download: bool = True) -> Path | None:
    """Path of the DINOv2 checkpoint: `weights`, else the HF cache, else a download (only if the hub answers).
    With download=False a reachable hub gives None instead (the preflight's "downloadable")."""
    if weights is not None:
        return _local_weights(weights, "dinov2")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = _hf_cache_dir()
    cached = try_to_load_from_cache(DINOV2_HF_REPO, DINOV2_FILE, cache_dir=cache)
    if isinstance(cached, str):
        return Path(cached)
    # With no refs/main file beside it, the hub cache resolves revision "main" to the folder snapshots/main/.
    expected = cache / f"models--{DINOV2_HF_REPO.replace('/', '--')}" / "snapshots" / "main" / DINOV2_FILE
    reason = "HF_HUB_OFFLINE is set" if env_true("HF_HUB_OFFLINE") else host_reachable("https://huggingface.co")
    if reason is not None:
        raise _unavailable(f"dinov2 ({DINOV2_HF_REPO})", DINOV2_FILE, expected, reason)
    if not download:
        return None
    try:
        return Path(hf_hub_download(DINOV2_HF_REPO, DINOV2_FILE, cache_dir=cache))
    except Exception as err:  # any hub failure is the same actionable error
        raise _unavailable(f"dinov2 ({DINOV2_HF_REPO})", DINOV2_FILE, expected, repr(err)) from err


def load_dinov2(weights: str | None, resize: int, *, blocks: Sequence[int] = DINOV2_BLOCKS,
                **arch_overrides) -> DINOv2Encoder:
    """DINOv2 encoder from a checkpoint file. `arch_overrides` (timm model kwargs) exist for small test nets."""
    import timm

    file = dinov2_weights_file(weights)  # resolve first: fail fast, before the slow model init
    # timm's own loader (file overlay) resamples the position embedding from the 518 px checkpoint to `resize`.
    vit = timm.create_model(DINOV2_MODEL, pretrained=True, img_size=resize, num_classes=0,
                            pretrained_cfg_overlay=dict(file=str(file)), **arch_overrides)
    return DINOv2Encoder(vit, resize, blocks)


def _build_pixel(**_) -> FrozenEncoder:
    return PixelEncoder()


def _build_resnet18(*, weights: str | None, **_) -> FrozenEncoder:
    return ResNet18Encoder(resnet18_state(weights))


def _build_dinov2(*, weights: str | None, resize: int | None, **_) -> FrozenEncoder:
    return load_dinov2(weights, resize or 224)


class MAEFeatureEncoder(FrozenEncoder):
    """The dataset-pretrained MAE encoder (mae.py): one map per stage."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.net = mae_encoder_from_state(state)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net(x)

    def official_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The official code's MAE maps: the stem, then every block's output (every second one in its deeper
        ResNets; this one has a block or two per stage), each after a GroupNorm without parameters."""
        h = self.net.stem(x)  # (B, w0, H, W)
        maps = [h]
        for stage in self.net.stages:
            for block in stage:
                h = block(h)
                maps.append(F.group_norm(h, GN_GROUPS))
        return maps


class OfficialFeatureSet(FrozenEncoder):
    """An encoder's maps for the `official` feature set: the raw image first (features.input_groups: `global`,
    `norm_x`), then the encoder's `official_maps` where it has them (mae), else its usual maps."""

    def __init__(self, encoder: FrozenEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.encoder.official_maps(x) if hasattr(self.encoder, "official_maps") else self.encoder(x)
        return [x, *maps]


def _build_mae(*, mae_state: Mapping[str, torch.Tensor] | None, **_) -> FrozenEncoder:
    if mae_state is None:
        raise ValueError("the mae encoder needs `mae_state`: the state dict returned by driftin.mae.pretrain_mae")
    return MAEFeatureEncoder(mae_state)


ENCODERS: dict[str, Callable[..., FrozenEncoder]] = {
    "pixel": _build_pixel,
    "mae": _build_mae,
    "resnet18": _build_resnet18,
    "dinov2": _build_dinov2,
}


# basic: the encoder's maps (one per stage); official: DRIFTING.md sec. 6 (OfficialFeatureSet).
FEATURE_SETS = ("basic", "official")


def available_encoders() -> tuple[str, ...]:
    return tuple(ENCODERS)


def validate(encoder: str, encoders) -> None:
    """The top-level `encoder` key and the pretrained encoders' keys of `encoders` (a config.EncodersConfig)."""
    choice(encoder, available_encoders(), "encoder")
    choice(encoders.feature_set, FEATURE_SETS, "encoders.feature_set")
    require(encoders.dinov2.resize % 14 == 0, "encoders.dinov2.resize", "must be a multiple of the ViT patch size 14")


def build_encoder(name: str, *, image_size: int, weights: str | None = None,
                  mae_state: Mapping[str, torch.Tensor] | None = None, resize: int | None = None,
                  feature_set: str = "basic") -> nn.Module:
    """Frozen encoder `name` for square `image_size` inputs. `resize`: DINOv2 input size (multiple of 14).
    feature_set `official` puts the raw image first and, for mae, the stem and every block (OfficialFeatureSet);
    feed its maps to features.feature_groups(..., with_input=True)."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; valid: {', '.join(available_encoders())}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8; got {image_size}")
    if resize is not None and (name != "dinov2" or resize % 14):
        raise ValueError(f"resize is the dinov2 input size (a multiple of 14); got {resize} for {name!r}")
    if weights is not None and name not in ("resnet18", "dinov2"):
        raise ValueError(f"weights is a pretrained checkpoint file for resnet18/dinov2, not for {name!r}")
    choice(feature_set, FEATURE_SETS, "encoders.feature_set")
    encoder = ENCODERS[name](weights=weights, mae_state=mae_state, resize=resize)
    return (OfficialFeatureSet(encoder) if feature_set == "official" else encoder).freeze()
