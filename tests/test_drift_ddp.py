"""DDP drift (DRIFTING.md sec. 3): 2 gloo processes on CPU reproduce the 1-process field on the global batch."""

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from driftin import drift, drift_reference
from driftin.drift import compute_drift, drift_loss

WORLD = 2
N_LOCAL, NP_LOCAL, NU_LOCAL = 8, 6, 3  # generated / positive / extra negative rows per rank


def _global_batch() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    # Two groups share C = 5, so one batched call (one bucket) holds both, as in the default run's feature groups.
    gen = {"loc": torch.randn(3, WORLD * N_LOCAL, 5, generator=g),
           "mean": torch.randn(1, WORLD * N_LOCAL, 4, generator=g),
           "std": torch.randn(2, WORLD * N_LOCAL, 5, generator=g).abs()}
    pos = {"loc": torch.randn(3, WORLD * NP_LOCAL, 5, generator=g) + 0.7,
           "mean": torch.randn(1, WORLD * NP_LOCAL, 4, generator=g) - 0.3,
           "std": torch.randn(2, WORLD * NP_LOCAL, 5, generator=g).abs() * 1.5}
    return gen, pos


def _global_extra_negatives() -> tuple[torch.Tensor, torch.Tensor]:
    """Extra negatives [3, WORLD * NU_LOCAL, 5] for the "loc" group and their per-target weights."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, WORLD * NU_LOCAL, 5, generator=g) - 0.5, 3 * torch.rand(3, WORLD * NU_LOCAL, generator=g)


class _CountingCollectives:
    """Counts this rank's collective calls, to check that they do not grow with the number of groups."""

    def __init__(self) -> None:
        self.calls = 0
        self._originals = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}

    def __enter__(self) -> "_CountingCollectives":
        for name, fn in self._originals.items():
            setattr(dist, name, self._counted(fn))
        return self

    def _counted(self, fn):
        def call(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)
        return call

    def __exit__(self, *exc) -> None:
        for name, fn in self._originals.items():
            setattr(dist, name, fn)


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        group = dist.group.WORLD
        gen, pos = _global_batch()
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        rows_pos = slice(rank * NP_LOCAL, (rank + 1) * NP_LOCAL)
        gen = {k: v[:, rows].clone().requires_grad_() for k, v in gen.items()}
        pos = {k: v[:, rows_pos] for k, v in pos.items()}
        # A small chunk size makes every bucket span several chunks of problems (with a shorter last one).
        drift.CHUNK_ELEMENTS = 2000
        V = compute_drift(gen["loc"].detach(), pos["loc"], group=group)
        u, w = (t[:, rank * NU_LOCAL:(rank + 1) * NU_LOCAL] for t in _global_extra_negatives())
        V_weighted = compute_drift(gen["loc"].detach(), pos["loc"], neg_extra=u, neg_weight=w, group=group)
        with _CountingCollectives() as counter:
            loss, stats = drift_loss(gen, pos, group=group)
        loss.backward()
        try:  # unequal local batches must fail loudly on every rank, not hang or mis-index
            compute_drift(gen["loc"].detach()[:, : N_LOCAL - rank], pos["loc"], group=group)
            unequal_error = ""
        except ValueError as e:
            unequal_error = str(e)
        torch.save({"V": V, "V_weighted": V_weighted, "grads": {k: v.grad for k, v in gen.items()}, "stats": stats,
                    "unequal_error": unequal_error, "collectives": counter.calls}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_process_field_and_gradients_match_one_process(tmp_path: Path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # The oracle: the per-group reference kernel on the whole global batch in one process.
    gen, pos = _global_batch()
    V_ref = drift_reference.compute_drift(gen["loc"], pos["loc"])
    gen = {k: v.clone().requires_grad_() for k, v in gen.items()}
    loss, stats_ref = drift_reference.drift_loss(gen, pos)
    loss.backward()

    V_ddp = torch.cat([r["V"] for r in ranks], dim=1)  # rank-major rows = global order
    print(f"\nDDP vs 1-process: max |V diff| = {(V_ddp - V_ref).abs().max().item():.2e} "
          f"(max |V| = {V_ref.abs().max().item():.2f})")
    # 1e-5 relative to the field's scale (each V_tau has unit RMS), the tolerance the batched kernel promises.
    torch.testing.assert_close(V_ddp, V_ref, atol=1e-5 * V_ref.abs().max().item(), rtol=0)
    # Weighted extra negatives: each rank passes its share (rows and weights), gathered like the positives.
    u, w = _global_extra_negatives()
    V_weighted_ref = compute_drift(gen["loc"], pos["loc"], neg_extra=u, neg_weight=w)
    V_weighted = torch.cat([r["V_weighted"] for r in ranks], dim=1)
    torch.testing.assert_close(V_weighted, V_weighted_ref, atol=1e-5 * V_weighted_ref.abs().max().item(), rtol=0)
    assert (V_weighted_ref - V_ref).abs().max() > 1e-2  # the extra negatives change the field
    for k, v in gen.items():
        # The local loss is a mean over 1/WORLD of the elements, so each rank's gradient is WORLD times the
        # 1-process one; DDP's average over WORLD ranks removes that factor.
        grad_ddp = torch.cat([r["grads"][k] for r in ranks], dim=1) / WORLD
        print(f"group {k}: max |grad diff| = {(grad_ddp - v.grad).abs().max().item():.2e} "
              f"(max |grad| = {v.grad.abs().max().item():.2e})")
        torch.testing.assert_close(grad_ddp, v.grad, atol=1e-7, rtol=1e-4)
    for r in ranks:  # global statistics agree on every rank
        assert r["stats"]["drift_norm"] == pytest.approx(stats_ref["drift_norm"], rel=1e-5)
        assert r["stats"]["energy"] == pytest.approx(stats_ref["energy"], rel=1e-5, abs=1e-6)
        assert "equal local" in r["unequal_error"]
        # Per step: the size check, one gather of all features, S, column min, column sums, lambda; the
        # per-group kernel ran 7 per group.
        assert r["collectives"] == 6
