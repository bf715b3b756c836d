"""The per-step losses the trainer calls: the drift objective keeps its kernel maths in fp32 under autocast."""

import torch
from torch import nn

from driftin.encoders import MAEFeatureEncoder
from driftin.mae import MAEConfig, MAEEncoder
from driftin.objectives import drift_objective


class _ScaledNoise(nn.Module):
    """A generator autocast leaves in fp32 (an elementwise product), so only the drift path can differ."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((3, 1, 1), 0.7))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return z * self.scale  # (B, 3, H, W)


def _loss_and_grad(autocast: bool) -> tuple[float, torch.Tensor]:
    torch.manual_seed(0)
    encoder = MAEFeatureEncoder(MAEEncoder(MAEConfig(widths=(8, 16))).state_dict()).freeze()
    encoder = encoder.to(memory_format=torch.channels_last)
    with torch.no_grad():
        real_maps = [m.half() for m in encoder(torch.randn(32, 3, 8, 8))]
    loss_fn = drift_objective(encoder, real_maps, batch_size=16, positives=24, image_size=8,
                              temperatures=(0.02, 0.05, 0.2), drift_kwargs={}, group=None,
                              device=torch.device("cpu"))
    model = _ScaledNoise()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # as the trainer wraps it on CUDA
        loss, _ = loss_fn(model, torch.Generator().manual_seed(1))
    loss.backward()
    return loss.item(), model.scale.grad


def test_drift_objective_is_fp32_under_outer_autocast():
    # The trainer runs loss_fn under bf16 autocast; the encoder on generated images and the drift field must
    # still run in fp32 (bf16 matmuls put ~0.4% error into the field, and the cached real maps are fp32).
    loss, grad = _loss_and_grad(autocast=False)
    loss_bf16, grad_bf16 = _loss_and_grad(autocast=True)
    assert loss_bf16 == loss
    torch.testing.assert_close(grad_bf16, grad, rtol=1e-6, atol=0)
