"""Shared test set-up: the Agg backend, and the grouping that keeps pytest-xdist (`make test`: `-n 2 --dist loadgroup`)
from executing a notebook twice."""
import os
from pathlib import Path

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


def pytest_collection_modifyitems(config, items):
    "The docs-site tests reuse the executed outputs that tests/test_notebooks.py saves in its worker's basetemp: one worker runs both."
    site = next((i.module for i in items if i.module.__name__.rpartition('.')[2] == 'test_site'), None)
    if site is None: return
    for item in items:
        nb = item.callspec.params.get('nb') if hasattr(item, 'callspec') else None
        if item.module is site or (nb is not None and Path(nb).stem in site.EXECUTE):
            item.add_marker(pytest.mark.xdist_group('site'))
