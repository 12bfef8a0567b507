"""DDP through torchrun (2 CPU processes, gloo) trains exactly like one process with the same global batch.

The test launches this file as the torchrun entry point (``python -m torch.distributed.run --standalone
--nproc_per_node 2 tests/test_ddp.py OUT``), then compares its loss curve and final weights with an in-process
single-process run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vis_core.engine.config import SolverConfig, TrainConfig
from vis_core.engine.trainer import Trainer, seed_all

MAX_ITER = 5


class Squares(Dataset):
    """Single-frame clips of a noisy bright square; the noise comes from the (per-sample seeded) torch RNG."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        y, x = torch.randint(0, 5, (2,), generator=g).tolist()
        mask = torch.zeros(8, 8)
        mask[y : y + 3, x : x + 3] = 1.0
        return {"images": mask.expand(1, 3, 8, 8) * 200 + torch.rand(1, 3, 8, 8) * 50, "mask": mask}


def collate(items):
    return {key: torch.stack([it[key] for it in items]) for key in ("images", "mask")}


class PixelNet(nn.Module):
    """Deterministic per-sample model (no dropout, no batch statistics), so DDP == one big batch."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, batch):
        logits = self.head(self.backbone(batch["images"][:, 0] / 255.0))[:, 0]
        return {"loss_mask": F.binary_cross_entropy_with_logits(logits, batch["mask"]),
                "loss_dice": 0.5 * (logits.sigmoid() - batch["mask"]).pow(2).mean()}


def make_config(output_dir):
    solver = SolverConfig(lr=5e-3, max_iter=MAX_ITER, batch_size=4, clip_grad=0.5, steps=[3])
    return TrainConfig(method="pixelnet", output_dir=str(output_dir), checkpoint_period=100, log_period=1,
                       seed=11, device="cpu", solver=solver)


def run(output_dir):
    """Train (single process, or one rank under torchrun) and return the trainer."""
    torch.set_num_threads(1)
    seed_all(0)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    trainer = Trainer(make_config(output_dir), PixelNet(), Squares(), collate)
    trainer.train()
    return trainer


def test_ddp_two_processes_matches_single_process(tmp_path):
    single = run(tmp_path / "single")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, MAX_ITER + 1))
    ddp_loss = torch.tensor([r["loss"] for r in rows])
    single_loss = torch.tensor([h["loss"] for h in single.history])
    assert torch.allclose(ddp_loss, single_loss, atol=1e-5, rtol=0), (ddp_loss, single_loss)
    # the loss must actually move, otherwise equality would prove little
    assert single_loss[-1] < single_loss[0]
    final = torch.load(tmp_path / "ddp" / "model_final.pth", weights_only=False)
    assert final["world_size"] == 2 and len(final["rng"]) == 2
    for name, value in single.model.state_dict().items():
        assert torch.allclose(final["model"][name], value, atol=1e-5), name


if __name__ == "__main__":  # torchrun entry point
    from vis_core.engine import distributed as du

    run(sys.argv[1])
    du.cleanup()
