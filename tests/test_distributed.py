"""DDP on CPU (gloo, 2 processes): GradAlign's double backward under DDP gives the
single-process update on the global batch; the trainer runs under torchrun."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from gradalign_fast import GradAlignLoss, attacks
from gradalign_fast.training import distributed
from gradalign_fast.training.methods import make_method
from gradalign_fast.training.step import train_step
from helpers import softplus_cnn as _model  # the small float64 conv net

EPS, LAM, STEPS, BATCH = 0.1, 1.0, 3, 8
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(BATCH, 1, 6, 6, generator=g, dtype=torch.float64),
             torch.randint(0, 5, (BATCH,), generator=g),
             torch.empty(BATCH, 1, 6, 6, dtype=torch.float64).uniform_(-EPS, EPS, generator=g))
            for _ in range(STEPS)]


def _gradalign_steps(model, batches, part):
    """FGSM + GradAlign with given noise, on the part (a slice) of each global batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    reg_fn = GradAlignLoss(EPS, LAM)
    for x, y, noise in batches:
        x, y, noise = x[part], y[part], noise[part]
        delta, grad = attacks.fgsm(model, x, y, EPS)
        loss = F.cross_entropy(model(x + delta), y) + reg_fn(model, x, y, grad_clean=grad,
                                                               noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _worker(rank, world, init_file, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    info = distributed.setup("cpu")
    assert (info.rank, info.world_size, info.started_here) == (rank, world, False)
    half = slice(rank * BATCH // world, (rank + 1) * BATCH // world)

    ddp = distributed.wrap(_model(), info)
    _gradalign_steps(ddp, _batches(), half)
    torch.save(distributed.unwrap(ddp).state_dict(), os.path.join(out_dir, f"explicit{rank}.pt"))

    # train_step with GradAlign's own (per-rank) noise: the ranks must stay in sync
    ddp = distributed.wrap(_model(), info)
    torch.manual_seed(100 + rank)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    for x, y, _ in _batches():
        train_step(make_method("gradalign", EPS, lam=LAM), ddp, opt, x[half], y[half])
    torch.save(distributed.unwrap(ddp).state_dict(), os.path.join(out_dir, f"step{rank}.pt"))
    del ddp, opt
    distributed.destroy_process_group()


def test_ddp_gradalign_matches_single_process_on_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    single = _model()
    _gradalign_steps(single, _batches(), slice(None))
    for rank in (0, 1):
        got = torch.load(tmp_path / f"explicit{rank}.pt")
        for k, v in single.state_dict().items():
            torch.testing.assert_close(got[k], v, rtol=1e-9, atol=1e-12)
    s0, s1 = torch.load(tmp_path / "step0.pt"), torch.load(tmp_path / "step1.pt")
    assert all(torch.equal(s0[k], s1[k]) for k in s0)  # gradients were all-reduced
    assert any(not torch.equal(s0[k], v) for k, v in _model().state_dict().items())


def test_trainer_under_torchrun(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "gradalign_fast", "train", "--method", "gradalign", "--epochs", "1",
           "--n-train", "256", "--batch-size", "64", "--n-eval", "32", "--eval-attacks",
           "clean,pgd-2-1", "--monitor-every", "2", "--no-progress", "--out", str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["iterations"] == 4 and final["n_eval"] == 32  # 256 points, 2 x 32 per step
    assert p.stdout.count("wrote") == 1  # rank 0 only


def test_setup_is_single_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.setup("cpu")
    assert not info.enabled and info.is_main
    model = nn.Linear(2, 2)
    assert distributed.wrap(model, info) is model and distributed.sampler([1], info, 0) is None
    with pytest.raises(Exception):
        distributed.broadcast_flag(True, distributed.DistInfo(0, 2), "cpu")  # no group
