import numpy as np
import pandas as pd
import pytest
from PIL import Image

from driftin.render import (batch_gif, class_grid, comparison_grid, image_grid, per_class, plot_benchmark, plot_fid,
                            plot_training_curves, speed_gif)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def images(n: int, h: int = 4, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)  # (N,H,W,3)


def gif_frames(path) -> list[tuple[int, np.ndarray]]:
    """(duration_ms, RGB array) per stored frame."""
    out = []
    with Image.open(path) as im:
        for i in range(im.n_frames):
            im.seek(i)
            out.append((im.info["duration"], np.asarray(im.convert("RGB"))))
    return out


def test_image_grid_shape_and_placement():
    imgs = images(5)
    grid = image_grid(imgs, nrow=3, scale=2, pad=1)
    assert grid.shape == (2 * (8 + 1) + 1, 3 * (10 + 1) + 1, 3) and grid.dtype == np.uint8
    # Image 4 sits in row 1, column 1, upscaled by nearest neighbour.
    y, x = 1 + 9, 1 + 11
    assert np.array_equal(grid[y:y + 8:2, x:x + 10:2], imgs[4])
    assert (grid[0] == 255).all()  # padding
    with pytest.raises(ValueError):
        image_grid(imgs.astype(np.float32), nrow=3)


def test_comparison_grid_stacks_labelled_rows():
    img = comparison_grid({"ddpm": images(4), "drift": images(4, seed=1)}, labels={"ddpm": "DDPM", "drift": "Drift"})
    strip = image_grid(images(4), 4)
    assert img.height == 2 * strip.shape[0] and img.width > strip.shape[1]
    arr = np.asarray(img)
    assert np.array_equal(arr[: strip.shape[0], img.width - strip.shape[1]:], strip)  # DDPM on top, right-aligned


def test_class_grid_puts_each_class_in_its_row_for_every_model():
    imgs = images(12)
    labels = np.arange(12) % 3
    rows = per_class(imgs, labels, 3, 4)  # [K, M, H, W, 3]
    assert rows.shape == (3, 4, 4, 5, 3)
    assert np.array_equal(rows[1, 2], imgs[7])  # class 1's third sample is sample 1 + 2 * 3
    with pytest.raises(ValueError, match="class 2 has 3 samples"):
        per_class(imgs[:11], labels[:11], 3, 4)
    grid = class_grid({"DDPM": rows, "Drift": rows[:, ::-1]}, ["a", "b", "c"], scale=2, pad=2)
    tile = image_grid(rows.reshape(-1, 4, 5, 3), 4, scale=2, pad=2)
    arr = np.asarray(grid)
    assert arr.shape[0] > tile.shape[0] and arr.shape[1] > 2 * tile.shape[1]
    # The DDPM block sits below the title row, its rows the classes in order.
    assert any(np.array_equal(arr[y:y + tile.shape[0], x:x + tile.shape[1]], tile)
               for y in range(arr.shape[0] - tile.shape[0] + 1) for x in range(0, 80))


def test_speed_gif_paced_by_measured_latencies(tmp_path):
    frames = list(images(10, 8, 8))
    path = tmp_path / "speed.gif"
    # 4 s DDPM fits in real time; drift appears after 0.3 s, each DDPM step after 0.4 s.
    info = speed_gif(frames, images(1, 8, 8)[0], ddpm_latency_s=4.0, drift_latency_s=0.3, path=path, size=32,
                     hold_s=1.0)
    assert info["scale"] == 1.0
    stored = gif_frames(path)
    durations = [d for d, _ in stored]
    assert durations == info["durations_ms"] == [300, 100] + [400] * 9 + [1000]
    assert sum(durations[:-1]) == 4000  # the last DDPM frame appears exactly at the measured latency
    assert sum(durations[: info["drift_frame"]]) == 300
    assert len({a.tobytes() for _, a in stored}) == len(stored)


def test_speed_gif_scales_slow_ddpm_uniformly(tmp_path):
    info = speed_gif(list(images(5, 8, 8)), images(1, 8, 8)[0], ddpm_latency_s=40.0, drift_latency_s=2.0,
                     path=tmp_path / "s.gif", size=32, max_play_s=8.0, hold_s=1.0)
    assert info["scale"] == pytest.approx(0.2)
    durations = info["durations_ms"]
    assert sum(durations[:-1]) == 8000  # 40 s shown in 8 s
    assert sum(durations[: info["drift_frame"]]) == 400  # 2 s drift at the same 0.2 scale
    with pytest.raises(ValueError):
        speed_gif([images(1)[0]], images(1)[0], ddpm_latency_s=1.0, drift_latency_s=0.0, path=tmp_path / "x.gif")


def test_batch_gif_frames_and_size(tmp_path):
    path = batch_gif([images(8, 8, 8, seed=s) for s in range(3)], tmp_path / "b.gif", nrow=4, frame_ms=500,
                     captions=["a", "b", "c"])
    stored = gif_frames(path)
    assert [d for d, _ in stored] == [500] * 3
    assert path.stat().st_size < 40_000
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file


def test_charts_are_valid_pngs(tmp_path):
    for name, df in {"a": pd.DataFrame({"step": [0, 1, 2], "loss": [1.0, 0.5, 0.2]}),
                     "b": pd.DataFrame({"step": [0, 1, 2], "loss": [2.0, 1.0, 0.9], "mmd": [0.3, 0.2, 0.1]})}.items():
        df.to_csv(tmp_path / f"{name}.csv", index=False)
    rows = [{"model": m, "mode": "eager_fp32", "batch_size": b, "status": "ok", "reason": "", "images_per_s": v * b}
            for m, v in (("ddpm", 2.0), ("drift", 100.0)) for b in (1, 8)]
    rows.append({"model": "drift", "mode": "cuda_graphs", "batch_size": 1, "status": "skipped", "reason": "cpu",
                 "images_per_s": None})
    outs = [plot_training_curves({"ddpm": tmp_path / "a.csv", "drift": tmp_path / "b.csv"}, tmp_path / "t.png"),
            plot_fid({"ddpm": {"fid": 10.0, "fid_lo": 9.0, "fid_hi": 11.5, "nfe": 50}, "drift": 15.0},
                     tmp_path / "f.png"),
            plot_benchmark(rows, tmp_path / "bench.png")]
    for out in outs:
        assert out.read_bytes()[:8] == PNG_MAGIC
        with Image.open(out) as im:
            assert im.width > 100 and im.height > 100


def test_speed_gif_slow_motion_for_fast_gpu_latencies(tmp_path):
    # 100 ms DDPM is a blink in real time: both are slowed 20x; drift's 0.5 ms (10 ms scaled) is clamped to the
    # 20 ms browsers honour.
    info = speed_gif(list(images(50, 8, 8)), images(1, 8, 8)[0], ddpm_latency_s=0.1, drift_latency_s=0.0005,
                     path=tmp_path / "fast.gif", size=32, min_play_s=2.0, hold_s=1.0)
    assert info["scale"] == pytest.approx(20.0)
    assert sum(info["durations_ms"][:-1]) == 2000 and min(info["durations_ms"]) >= 20
    assert sum(info["durations_ms"][: info["drift_frame"]]) == 20
