"""Shared test set-up: the Agg backend, and the grouping that keeps pytest-xdist (`make test`: `-n 2 --dist loadgroup`)
from executing a notebook twice."""
import os
from pathlib import Path

import pytest

os.environ.setdefault('MPLBACKEND', 'Agg')


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
