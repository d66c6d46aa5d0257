"""Run by tests/test_train.py under torchrun: one DDP step of ResNet-18 with `sync_batchnorm` on this rank's share
of a fixed batch; rank 0 saves the averaged gradients and the BatchNorm running statistics. Float64: at 32 px the
last stage's BatchNorm sees 1×1 maps and float32 gradients of even one process are a few % off the exact ones."""
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import dctkd.compat  # noqa: F401  (the torchvision guard, before torchvision)
import torchvision
from dctkd.distributed import sync_batchnorm


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 5, (12,), generator=g)


def net():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).double()


if __name__ == '__main__':
    torch.set_num_threads(1)
    dist.init_process_group('gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    model = net()
    assert sync_batchnorm(model) == 20
    ddp = nn.parallel.DistributedDataParallel(model)
    x, y = batch()
    F.cross_entropy(ddp(x[rank::world]), y[rank::world]).backward()
    if rank == 0:
        torch.save({'grads': {k: p.grad for k, p in model.named_parameters()}, 'buffers': dict(model.named_buffers())},
                   sys.argv[1])
    dist.destroy_process_group()
