"""The benchmark scripts in quick mode (a smoke run each: format and hygiene, never timings), and the benchmarks guide
generated from their results."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / 'benchmarks'
sys.path.insert(0, str(BENCH))
from guide import MARK, cell_text, generated_cells, rewrite  # noqa: E402

SCRIPTS = ['dct', 'train', 'data', 'train_e2e', 'switches', 'split', 'determinism']
MEDIAN_RANGE = re.compile(r'-?\d+(\.\d+)? \[-?\d+(\.\d+)?–-?\d+(\.\d+)?\]')


@pytest.mark.parametrize('name', SCRIPTS)
def test_script_quick_mode(tmp_path, name):
    xdg, scratch, out = tmp_path / 'xdg', tmp_path / 'tmp', tmp_path / 'results'
    scratch.mkdir()
    env = {**os.environ, 'XDG_CACHE_HOME': str(xdg), 'TMPDIR': str(scratch), 'MPLBACKEND': 'Agg'}
    env.pop('DCTKD_CACHE', None)
    r = subprocess.run([sys.executable, str(BENCH / f'{name}.py'), '--quick', '--out', str(out)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)   # a quick run takes 10–35 s
    assert r.returncode == 0, r.stdout + r.stderr
    assert MEDIAN_RANGE.search(r.stdout), r.stdout                          # median [min–max]
    assert re.search(r'load \d+\.\d / \d+\.\d / \d+\.\d on \d+ cores', r.stdout), r.stdout
    res = json.loads((out / f'{name}.json').read_text())
    assert res['machine']['cores'] == os.cpu_count() and len(res['machine']['loadavg']) == 3 and res['machine']['date']
    for key, s in res['results'].items():
        assert s['min'] <= s['median'] <= s['max'] and len(s['values']) == s['n'], key
    md = (out / f'{name}.md').read_text()
    assert md.startswith('## ') and 'load average' in md and MEDIAN_RANGE.search(md)
    assert not (xdg / 'dctkd').exists(), 'a decode cache was left in the user cache folder'
    left = [p.name for p in scratch.iterdir() if 'dctkd' in p.name]
    assert left == [], f'scratch folders left behind: {left}'


def test_guide_rewrites_only_its_generated_cells(tmp_path):
    guide = tmp_path / 'benchmarks.ipynb'
    shutil.copy(ROOT / 'nbs' / 'guides' / 'benchmarks.ipynb', guide)
    nb = json.loads(guide.read_text())
    hand = {'cell_type': 'markdown', 'id': 'x1', 'metadata': {}, 'source': ['## Another section\n', '12.5× by hand']}
    nb['cells'].append(hand)                                                 # e.g. a section someone else writes
    guide.write_text(json.dumps(nb, indent=1))
    names = list(generated_cells(nb))
    assert set(names) == set(SCRIPTS)
    res = tmp_path / 'res'; res.mkdir()
    for n in names: (res / f'{n}.md').write_text(f'## {n}\n\n| a | b |\n|---|---:|\n| x | 1.0 [0.9–1.1] |\n')
    assert rewrite(guide, res) == names
    new = json.loads(guide.read_text())
    assert len(new['cells']) == len(nb['cells'])
    for old, c in zip(nb['cells'], new['cells']):
        src = ''.join(c['source'])
        m = re.match(r'<!-- generated from benchmarks/results/(\w+)\.md', src)
        if m: assert src == MARK.format(m.group(1)) + '\n' + (res / f'{m.group(1)}.md').read_text().rstrip('\n')
        else: assert c == old                                                # hand-written cells untouched
    (res / 'dct.md').unlink()
    with pytest.raises(SystemExit, match='dct.md not found'): rewrite(guide, res)


def test_the_guide_shows_the_committed_results():
    nb = json.loads((ROOT / 'nbs' / 'guides' / 'benchmarks.ipynb').read_text())
    for name, c in generated_cells(nb).items():
        assert ''.join(c['source']) == cell_text(name, BENCH / 'results'), f'{name}: run make bench (guide and results differ)'
