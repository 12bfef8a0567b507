"""One way to rebuild a trained method: from its run directory, from a checkpoint file of it, or from a
checkpoint alone (its stored config); a wrong or incomplete input is refused naming the file."""

import shutil

import pytest
import torch
import yaml

from vis_core.cli import main as vis
from vis_core.engine.config import ConfigError
from vis_core.engine.runs import find_checkpoint, load_trained_method


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_idol_config):
    root = tmp_path_factory.mktemp("run")
    cfg = {**tiny_idol_config, "solver": {"max_iter": 2, "batch_size": 1}, "checkpoint_period": 1,
           "output_dir": str(root / "run")}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert vis(["train", "--config", str(root / "cfg.yaml")]) == 0
    return root / "run"


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_dir_file_and_stored_config_give_the_same_method(run_dir, tmp_path):
    assert find_checkpoint(run_dir).name == "model_final.pth"
    from_dir = load_trained_method(run_dir)
    assert not from_dir.training
    assert _same_weights(from_dir, load_trained_method(run_dir / "model_final.pth"))
    # a checkpoint copied away from its run directory still carries its config
    shutil.copy(run_dir / "model_final.pth", tmp_path / "alone.pth")
    assert _same_weights(from_dir, load_trained_method(tmp_path / "alone.pth"))
    # an earlier checkpoint of the same run differs
    earlier = load_trained_method(run_dir, checkpoint=run_dir / "model_0000001.pth")
    assert not _same_weights(from_dir, earlier)
    # test-time overrides of the stored config reach the method
    assert from_dir.tracker_cfg.score_thresh != 0.3
    tracked = load_trained_method(run_dir, overrides=["model.tracker={score_thresh: 0.3}"])
    assert tracked.tracker_cfg.score_thresh == 0.3 and _same_weights(from_dir, tracked)


def test_bad_runs_are_refused_naming_the_file(run_dir, tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load_trained_method(tmp_path)  # an empty directory: no checkpoint
    torch.save({"w": torch.zeros(1)}, tmp_path / "bare.pth")
    with pytest.raises(ConfigError, match="bare.pth stores no config"):
        load_trained_method(tmp_path / "bare.pth")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(run_dir / "config.yaml", other / "config.yaml")
    torch.save({"model": {}}, other / "model_final.pth")
    with pytest.raises(ConfigError, match=r"model_final.pth: checkpoint lacks \d+ parameters"):
        load_trained_method(other)
