"""Loading a checkpoint never runs code: crafted torch files and detectron2 pickles are refused, naming the
file, before their payload executes; real weights (ours, numpy pickles) still load."""

import pathlib
import pickle

import numpy as np
import pytest
import torch
import yaml

from vis_core.cli import main as vis
from vis_core.io.weights import UnsafeCheckpointError, load_detectron2_pickle, load_torch_file
from vis_core.modeling.backbones import read_checkpoint


class Payload:
    """Unpickling this creates ``marker``: the stand-in for any code a malicious checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def crafted_torch_file(tmp_path, name="evil.pth"):
    marker = tmp_path / f"{name}.ran"
    path = tmp_path / name
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Payload(marker)}, path)
    return path, marker


def crafted_pickle(tmp_path):
    marker = tmp_path / "pkl.ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.zeros(2, np.float32)}, "x": Payload(marker)}, protocol=2))
    return path, marker


def test_the_payload_would_run_with_plain_pickle(tmp_path):
    # the test's premise: an unrestricted load does execute the payload
    path, marker = crafted_pickle(tmp_path)
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_crafted_files_are_refused_before_their_payload_runs(tmp_path):
    torch_path, torch_marker = crafted_torch_file(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=rf"{torch_path}: refused.*pathlib.PosixPath"):
        load_torch_file(torch_path)
    pkl_path, pkl_marker = crafted_pickle(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=rf"{pkl_path}: refused.*getattr"):
        load_detectron2_pickle(pkl_path)
    for path in (torch_path, pkl_path):  # the backbone reader goes through the same loaders
        with pytest.raises(UnsafeCheckpointError, match=str(path)):
            read_checkpoint(path)
    assert not torch_marker.exists() and not pkl_marker.exists()


def test_real_weights_still_load(tmp_path):
    # a detectron2 model-zoo style pickle (protocol 2, numpy arrays and scalars, an OrderedDict)
    from collections import OrderedDict

    arrays = OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3), n=np.array(7, dtype=np.int64))
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "d2", "step": np.float64(0.5)}, protocol=2))
    obj = load_detectron2_pickle(path)
    assert np.array_equal(obj["model"]["w"], arrays["w"]) and obj["step"] == 0.5
    assert torch.equal(read_checkpoint(path)["w"], torch.arange(6.0).view(2, 3))
    # our training state: tensors, optimizer state, python / numpy RNG states (numpy arrays inside)
    state = {"model": {"w": torch.ones(3)}, "rng": {"numpy": np.random.get_state(), "python": (3, (1, 2), None)}}
    torch.save(state, tmp_path / "last.pth")
    loaded = load_torch_file(tmp_path / "last.pth")
    assert torch.equal(loaded["model"]["w"], torch.ones(3))
    assert np.array_equal(loaded["rng"]["numpy"][1], state["rng"]["numpy"][1])


def test_vis_infer_refuses_a_crafted_run_checkpoint(tmp_path, capsys, tiny_idol_config):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({**tiny_idol_config, "output_dir": str(run)}))
    path, marker = crafted_torch_file(run, "model_final.pth")
    rc = vis(["infer", "--run", str(run), "--gt", str(tmp_path / "gt.json"), "--image-root", str(tmp_path),
              "--out", str(tmp_path / "out.json"), "--no-progress"])
    assert rc == 1 and str(path) in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("method, suffix", [("idol", ".pth"), ("minvis", ".pth"), ("minvis", ".pkl")])
def test_vis_train_refuses_crafted_init_weights(tmp_path, capsys, tiny_idol_config, method, suffix):
    path, marker = crafted_torch_file(tmp_path) if suffix == ".pth" else crafted_pickle(tmp_path)
    cfg = {**tiny_idol_config, "method": method, "init_weights": str(path), "output_dir": str(tmp_path / "out")}
    if method == "minvis":
        cfg["model"] = {"preset": "tiny", "num_classes": 5, "num_queries": 8}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    rc = vis(["train", "--config", str(tmp_path / "cfg.yaml")])
    assert rc == 2 and str(path) in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out" / "model_final.pth").exists()
