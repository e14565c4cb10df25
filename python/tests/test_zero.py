"""rmsprop_simd.torch.RMSprop as the optimizer_class of ZeroRedundancyOptimizer: two processes
on the gloo backend (localhost) give exactly the parameters of a single process."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.optim import ZeroRedundancyOptimizer

from rmsprop_simd.torch import RMSprop

STEPS = 8
HP = dict(lr=1e-2, momentum=0.9, centered=True)


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


def train(opt, model):
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x = torch.randn(8, 16, generator=gen)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def worker(rank, port, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = make_model()
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=RMSprop, **HP)
        train(opt, model)  # same data on both ranks: same gradients, no all-reduce needed
        torch.save([p.detach() for p in model.parameters()], f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero_redundancy_optimizer_two_processes(tmp_path):
    model = make_model()
    train(RMSprop(model.parameters(), **HP), model)
    single = [p.detach() for p in model.parameters()]
    out = str(tmp_path / "params")
    mp.spawn(worker, args=(free_port(), out), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        assert len(got) == len(single)
        for a, b in zip(got, single):
            assert torch.equal(a, b), f"rank {rank} differs from a single process"
