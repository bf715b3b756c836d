"""The writers of DVC outputs are byte-stable: the same content gives the same file, whatever the temporary name
or the time of writing, so DVC's hashes (and every downstream stage) change only when results do."""
import time

import numpy as np
import torch

from driftin.files import load_npz, save_npz, torch_save


def test_torch_save_is_byte_stable(tmp_path):
    obj = {"w": torch.arange(6.0).reshape(2, 3), "meta": {"steps": 3, "name": "x", "t": [0.1, 0.2]}}
    torch_save(tmp_path / "a.pt", obj)
    first = (tmp_path / "a.pt").read_bytes()
    torch_save(tmp_path / "a.pt", obj)  # a new random temporary name
    assert (tmp_path / "a.pt").read_bytes() == first
    torch_save(tmp_path / "b.pt", obj)  # another file name
    assert (tmp_path / "b.pt").read_bytes() == first
    loaded = torch.load(tmp_path / "a.pt", weights_only=True)
    assert torch.equal(loaded["w"], obj["w"]) and loaded["meta"] == obj["meta"]


def test_save_npz_is_byte_stable_and_loads_with_numpy(tmp_path, monkeypatch):
    arrays = {"images": np.arange(48, dtype=np.uint8).reshape(1, 4, 4, 3), "names": np.array(["a", "bc"])}
    save_npz(tmp_path / "a.npz", **arrays)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86400)  # a day later: zip members carry a time
    save_npz(tmp_path / "b.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = load_npz(tmp_path / "b.npz")
    assert set(loaded) == set(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(loaded[k], v)
