"""Every public name design.md lists ("Public names that outside code relies on") imports, and every console script it
names is installed and resolves: moved names keep a forwarding name."""
import configparser
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# where the project's shared design.md lives beside a checkout (../shared, or ../../shared for a worktree)
DESIGN = next((p for p in (REPO.parent / 'shared' / 'design.md', REPO.parent.parent / 'shared' / 'design.md') if p.is_file()), None)
# the names of design.md's section on 2026-12-06, for a checkout without the shared folder (kept equal to the doc below)
KNOWN = {'dctkd.dct.dct2', 'dctkd.dct.idct2', 'dctkd.attention.attention_map', 'dctkd.losses.dct_loss', 'dctkd.losses.kd_loss',
         'dctkd.losses.at_loss', 'dctkd.losses.pkt_loss', 'dctkd.distillers.names', 'dctkd.distillers.build',
         'dctkd.models.build_model', 'dctkd.data.get_dataset', 'dctkd.data.make_toy_scenes', 'dctkd.explorer.AttentionExplorer',
         'dctkd.viz.AttentionExplorer', 'dctkd.train.fit', 'dctkd.config.make_config', 'dctkd.train.PRESETS', 'dctkd.data.NORM_STATS'}
SCRIPTS = {'dctkd_train', 'dctkd_evaluate', 'dctkd_extract', 'dctkd_download', 'dctkd_sweep', 'dctkd_report'}


def public_names(text:str) -> tuple:
    "(dotted names, console scripts) in the 'Public names' section of design.md."
    sec = re.search(r'^## Public names.*?$(.*?)(?=^## )', text, re.S | re.M).group(1)
    names = set(re.findall(r'`(dctkd(?:\.\w+)+)', sec))                      # `dctkd.x.y(...)` -> dctkd.x.y
    for name, mod in re.findall(r'`(dctkd(?:\.\w+)+)`\s*\(also reachable from `(dctkd(?:\.\w+)*)`\)', sec):
        names.add(f"{mod}.{name.rsplit('.', 1)[1]}")                        # "X (also reachable from `dctkd.viz`)"
    names = {n for n in names if n.count('.') >= 2 or n.rsplit('.', 1)[1][0].isupper()}   # modules themselves are not names
    return names, set(re.findall(r'`(dctkd_\w+)`', sec))


def test_the_section_parses_to_the_known_names():
    if DESIGN is None: pytest.skip('no shared design.md beside this checkout; KNOWN is tested below')
    names, scripts = public_names(DESIGN.read_text())
    assert names and scripts
    missing = names - KNOWN
    assert not missing, f"design.md lists names this test does not know yet; add them to KNOWN: {sorted(missing)}"
    assert scripts <= SCRIPTS, scripts - SCRIPTS


def _names():
    return sorted(KNOWN | (public_names(DESIGN.read_text())[0] if DESIGN else set()))


@pytest.mark.parametrize('dotted', _names())
def test_public_name_imports(dotted):
    mod, name = dotted.rsplit('.', 1)
    assert getattr(importlib.import_module(mod), name) is not None
    exec(f"from {mod} import {name}", {})                                     # the `from X import Y` spelling works too


def test_console_scripts_are_declared_and_resolve():
    cp = configparser.ConfigParser(); cp.read(REPO / 'settings.ini')
    entries = dict(e.split('=', 1) for e in cp['DEFAULT']['console_scripts'].split())
    for s in SCRIPTS | (public_names(DESIGN.read_text())[1] if DESIGN else set()):
        assert s in entries, s
        mod, fn = entries[s].split(':')
        assert callable(getattr(importlib.import_module(mod), fn)), entries[s]
