"""Every notebook's own tests, run by nbdev's notebook runner: one pytest test per notebook."""
from configparser import ConfigParser
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'


def _notebooks():
    "Notebooks nbdev_test would run: not hidden, not `_`-prefixed, not under a folder holding `.notest`."
    out = []
    for p in sorted(NBS.rglob('*.ipynb')):
        rel = p.relative_to(NBS)
        if any(part.startswith(('.', '_')) for part in rel.parts): continue
        if any((NBS / Path(*rel.parts[:i]) / '.notest').exists() for i in range(len(rel.parts))): continue
        out.append(p)
    return out


def _skip_flags():
    "settings.ini's tst_flags, less `cuda` when a GPU is present."
    cfg = ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    flags = cfg['DEFAULT'].get('tst_flags', '').split()
    return [f for f in flags if not (f == 'cuda' and torch.cuda.is_available())]


def test_notebooks_found():
    names = {p.stem for p in _notebooks()}
    assert {'index', '00_dct', '01_attention', '02_losses', '03_compat', '13_runs', '00_readme'} <= names


# the docs-site tests (tests/test_site.py, all in xdist group 'site') reuse the outputs of these notebooks' runs: one worker runs them all
SITE_NOTEBOOKS = ['00_dct', '02_losses', '04_models', '05_distillers', '09_datasets', '13b_eval_report', '14_evaluate', '16_figures', '17_explorer']


@pytest.mark.parametrize('nb', [pytest.param(p, marks=[pytest.mark.xdist_group('site')] if p.stem in SITE_NOTEBOOKS and p.parent == NBS else [])
                                for p in _notebooks()], ids=lambda p: str(p.relative_to(NBS)))
def test_notebook(nb, tmp_path_factory):
    from nbdev.test import test_nb
    from dctkd.tools.site import record_outputs
    with record_outputs(tmp_path_factory.getbasetemp() / 'executed'):     # tests/test_site.py builds the site from these outputs
        ok, _ = test_nb(nb, skip_flags=_skip_flags(), basepath=ROOT)
    assert ok, f'{nb.name} failed; its traceback is in the captured stderr above'
