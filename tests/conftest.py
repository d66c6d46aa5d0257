"""Shared test set-up: the Agg backend, one share of the cores per pytest-xdist worker (`make test`: `-n 2 --dist loadgroup`),
and the `xdist_group` marker (tests/test_site.py and the notebooks whose outputs it reuses run on one worker)."""
import os

import pytest

os.environ.setdefault('MPLBACKEND', 'Agg')

# One share of the cores per pytest-xdist worker, for this process and the ones it starts (notebook kernels, sweep jobs):
# two workers of two OpenMP threads each on a 2-core machine spin at every barrier waiting for a core, and a network of
# many small kernels (MobileNetV2's depthwise convolutions) then runs hundreds of times slower than alone.
if os.environ.get('PYTEST_XDIST_WORKER'):
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))))
    os.environ.update(OMP_NUM_THREADS=_share, MKL_NUM_THREADS=_share)
    import torch
    torch.set_num_threads(int(_share))


def pytest_configure(config):
    config.addinivalue_line('markers', 'xdist_group(name): tests that pytest-xdist runs on one worker, in collection order')



