"""Trainer behaviour on a tiny toy method: learning, bit-identical resume, logs, optimizer groups, config."""

import dataclasses
import json
import pickle
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vis_core.engine.checkpoint import CheckpointManager, atomic_torch_save
from vis_core.engine.config import ConfigError, SolverConfig, TrainConfig, load_config
from vis_core.engine.metrics_log import read_metrics
from vis_core.engine.optim import build_lr_scheduler, build_optimizer
from vis_core.engine.trainer import Trainer, TrainingBatchSampler, seed_all
from vis_core.methods.base import VISMethod
from vis_core.methods.registry import build_method, register_method


class ToyClips(Dataset):
    """Clips of 2 frames (3 x 8 x 8) whose target is a bright square; augmentation uses all three RNGs."""

    def __init__(self, n=12):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        y, x = torch.randint(0, 5, (2,), generator=g).tolist()
        mask = torch.zeros(8, 8)
        mask[y : y + 3, x : x + 3] = 1.0
        image = mask.expand(2, 3, 8, 8) * 200 + torch.rand(2, 3, 8, 8) * 40  # torch RNG
        if random.random() < 0.5:  # python RNG
            image, mask = image.flip(-1), mask.flip(-1)
        image = image + float(np.random.uniform(-5, 5))  # numpy RNG
        return {"images": image, "mask": mask}


def toy_collate(items):
    return {key: torch.stack([it[key] for it in items]) for key in ("images", "mask")}


class ToyMethod(VISMethod):
    """A per-pixel segmenter with a 'backbone', a norm layer, dropout and an embedding."""

    def __init__(self, width=8):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(2, width), nn.ReLU())
        self.dropout = nn.Dropout(0.2)
        self.query = nn.Embedding(1, width)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, batch):
        images = batch["images"].flatten(0, 1) / 255.0  # (B*T, 3, H, W)
        feats = self.dropout(self.backbone(images)) + self.query.weight[0][:, None, None]
        logits = self.head(feats)[:, 0]
        target = batch["mask"].repeat_interleave(batch["images"].shape[1], 0)
        return {"loss_mask": F.binary_cross_entropy_with_logits(logits, target),
                "loss_l1": 0.1 * (logits.sigmoid() - target).abs().mean()}


@pytest.fixture(autouse=True)
def one_thread():
    # tiny ops: threads only add contention on the shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_cfg(tmp_path, name="run", **solver):
    base = dict(lr=1e-2, max_iter=6, batch_size=4, clip_grad=1.0, steps=[4], gamma=0.5)
    base.update(solver)
    return TrainConfig(method="toy", output_dir=str(tmp_path / name), checkpoint_period=3, log_period=1,
                       seed=3, device="cpu", solver=SolverConfig(**base))


def make_trainer(cfg, model_seed=0, **kw):
    seed_all(model_seed)
    return Trainer(cfg, ToyMethod(), ToyClips(), toy_collate, device=torch.device("cpu"), **kw)


def test_loss_decreases_on_toy_task(tmp_path):
    cfg = make_cfg(tmp_path, max_iter=40, steps=[], clip_grad=0.0)
    cfg.checkpoint_period = 1000
    history = make_trainer(cfg).train()
    first = np.mean([h["loss"] for h in history[:5]])
    last = np.mean([h["loss"] for h in history[-5:]])
    assert last < 0.5 * first


def test_resume_is_bit_identical(tmp_path):
    straight = make_trainer(make_cfg(tmp_path, "straight"))
    straight.resume_or_load(resume=True)  # nothing to resume: fresh start
    full = straight.train()

    cfg = make_cfg(tmp_path, "interrupted")
    first = make_trainer(cfg)
    first.train(until=3)
    # a killed job may have logged iterations after its last checkpoint (and half a line)
    with open(tmp_path / "interrupted" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 4, "loss": -1.0}) + "\n" + '{"iteration": 5, "lo')
    # a new process: different RNG state and initial weights before resuming
    second = make_trainer(cfg, model_seed=123)
    assert second.resume_or_load(resume=True) and second.iteration == 3
    rest = second.train()

    assert [h["loss"] for h in full] == [h["loss"] for h in first.history + rest]
    for a, b in zip(straight.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the metrics log of the resumed run equals the straight one exactly
    a = read_metrics(tmp_path / "straight")
    b = read_metrics(tmp_path / "interrupted")
    assert a["iteration"].tolist() == b["iteration"].tolist() == list(range(1, 7))
    assert a["loss"].tolist() == b["loss"].tolist() and a["lr"].tolist() == b["lr"].tolist()
    names = sorted(p.name for p in (tmp_path / "interrupted").iterdir() if p.suffix == ".pth")
    assert names == ["last.pth", "model_0000003.pth", "model_final.pth"]


def test_data_order_does_not_depend_on_workers(tmp_path):
    cfg = make_cfg(tmp_path, "w0", max_iter=3)
    ref = make_trainer(cfg).train()
    cfg = make_cfg(tmp_path, "w2", max_iter=3)
    cfg.data.num_workers = 2
    got = make_trainer(cfg).train()
    assert [h["loss"] for h in ref] == [h["loss"] for h in got]


def test_metrics_log_and_lr_schedule(tmp_path):
    cfg = make_cfg(tmp_path, max_iter=6, steps=[2, 4], gamma=0.1)
    cfg.log_period = 2
    make_trainer(cfg).train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [2, 4, 6]
    # lr after iteration i is the lr of iteration i (0-based): 2 -> 1e-3, 4 -> 1e-4, 6 -> 1e-4
    assert np.allclose([r["lr"] for r in rows], [1e-3, 1e-4, 1e-4])
    assert {"loss", "loss_mask", "loss_l1", "grad_norm", "it_per_s", "time", "data_time"} <= set(rows[0])
    csv = read_metrics(tmp_path / "run" / "metrics.csv")
    assert csv["iteration"].tolist() == [2, 4, 6] and np.allclose(csv["loss"], [r["loss"] for r in rows])


def test_param_groups_backbone_multiplier_and_no_decay():
    model = ToyMethod()
    solver = SolverConfig(lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1)
    opt = build_optimizer(model, solver)
    by_name = {n: (g["lr"], g["weight_decay"]) for g in opt.param_groups for n in g["names"]}
    assert by_name["backbone.0.weight"] == pytest.approx((1e-5, 0.05))
    assert by_name["backbone.1.weight"] == pytest.approx((1e-5, 0.0))  # GroupNorm: no decay
    assert by_name["query.weight"] == pytest.approx((1e-4, 0.0))  # embedding: no decay
    assert by_name["head.weight"] == pytest.approx((1e-4, 0.05))
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    # warmup then steps
    sched = build_lr_scheduler(opt, dataclasses.replace(solver, steps=[3], warmup_iters=2, warmup_factor=0.5))
    head = next(g for g in opt.param_groups if "head.weight" in g["names"])
    lrs = []
    for _ in range(5):
        lrs.append(head["lr"])
        opt.step()
        sched.step()
    assert np.allclose(lrs, [0.5e-4, 0.75e-4, 1e-4, 1e-5, 1e-5])


def test_gradient_clipping_bounds_the_global_norm(tmp_path):
    cfg = make_cfg(tmp_path, clip_grad=1e-3)
    trainer = make_trainer(cfg)
    batch = toy_collate([ToyClips()[i] for i in range(4)])
    values = trainer.run_step(trainer.model, batch)
    grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    assert values["grad_norm"] > 1e-3 and grads.norm() <= 1e-3 * (1 + 1e-4)


def test_sampler_shards_equal_the_global_batch():
    single = iter(TrainingBatchSampler(10, 4, seed=5, start_position=8))
    shards = [iter(TrainingBatchSampler(10, 4, rank=r, world_size=2, seed=5, start_position=8))
              for r in range(2)]
    for _ in range(6):
        assert next(single) == next(shards[0]) + next(shards[1])
    # every index appears once per epoch
    s = iter(TrainingBatchSampler(10, 5, seed=1))
    epoch = [i for _ in range(2) for _, i in next(s)]
    assert sorted(epoch) == list(range(10))


def test_atomic_save_keeps_previous_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep=1)
    manager.save({"w": torch.ones(2)}, 1)
    manager.save({"w": torch.full((2,), 2.0)}, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "model_0000002.pth"]
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        atomic_torch_save({"bad": lambda: 0}, tmp_path / "last.pth")  # lambdas do not pickle
    assert torch.equal(manager.load()["w"], torch.full((2,), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "model_0000002.pth"]


@dataclasses.dataclass
class ToyConfig:
    width: int = 8


@register_method("toy_test_method", config=ToyConfig)
class RegisteredToyMethod(ToyMethod):
    def __init__(self, cfg: ToyConfig):
        super().__init__(cfg.width)


def test_config_from_yaml_with_overrides_and_errors(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "train:\n"
        "  method: toy_test_method\n"
        "  model: {width: 4}\n"
        "  solver: {lr: 1e-4, steps: [10, 20], max_iter: 30}\n"
        "  data: {num_frames: 3}\n"
    )
    cfg = load_config(path, "train", ["solver.max_iter=40", "model.width=6", "seed=7"])
    assert cfg.solver.lr == 1e-4 and cfg.solver.steps == [10, 20] and cfg.solver.max_iter == 40
    assert cfg.data.num_frames == 3 and cfg.seed == 7 and cfg.model == {"width": 6}
    assert build_method(cfg).head.in_channels == 6

    with pytest.raises(ConfigError, match=r"params\.yaml \[train\]\.solver: unknown key 'lrr'"):
        load_config(path, "train", ["solver.lrr=1"])
    with pytest.raises(ConfigError, match=r"params\.yaml \[train\]\.solver\.max_iter: expected an integer"):
        load_config(path, "train", ["solver.max_iter=abc"])
    with pytest.raises(ConfigError, match="no section 'nope'"):
        load_config(path, "nope")
    with pytest.raises(ConfigError, match="unknown key 'depth'"):
        build_method(load_config(path, "train", ["model.depth=3"]), where=f"{path} [train] model")
    with pytest.raises(KeyError, match="unknown method 'nothing'"):
        build_method("nothing")
