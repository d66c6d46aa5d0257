"""The docs site built without Quarto (dctkd.site): the build itself, then the built site in a real browser.

The build runs once per session into a tmp folder, executing 00_dct and 02_losses so their figures are on the pages.
The browser test serves it with python's http.server on 127.0.0.1 and opens every page in Debian's Chromium through
playwright-core (tests/site/check.js): pages load, internal links and anchors resolve, MathJax typesets the math (no
raw `$$` left), every exported name of every dctkd module has an API entry, figures load, search answers. Screenshots
go to $DCTKD_ARTIFACTS/site/ (default tests/artifacts/site/).

Needs /usr/bin/chromium, node, tests/browser/node_modules/playwright-core and tests/site/node_modules/mathjax:
`bash tests/site/setup.sh` installs them. Without them the browser test skips, unless DCTKD_REQUIRE_BROWSER is set."""
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / 'tests' / 'site'
CHROMIUM = os.environ.get('CHROMIUM', '/usr/bin/chromium')
EXECUTE = ['00_dct', '02_losses']


def _modules():
    "Every dctkd module a notebook exports to, with its `__all__`."
    out = {}
    for f in sorted((ROOT / 'dctkd').glob('*.py')):
        if f.stem.startswith('_'): continue
        m = importlib.import_module(f'dctkd.{f.stem}')
        out[f.stem] = list(getattr(m, '__all__', []))
    return out


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    from dctkd.tools.site import build_site
    out = tmp_path_factory.mktemp('site') / '_docs'
    t0 = time.time()
    report = build_site(out, execute=EXECUTE, budget=120)
    report['build_s'] = time.time() - t0
    return out, report


def test_page_names_and_sidebar():
    from dctkd.tools.site import page_name, read_sidebar
    assert page_name('00_dct.ipynb') == 'dct.html' and page_name('index.ipynb') == 'index.html'
    assert page_name('guides/paper_tables.ipynb') == 'guides/paper_tables.html'
    secs = read_sidebar()
    files = [f for _, items in secs for f in items]
    nbs = sorted(p.name for p in (ROOT / 'nbs').glob('[0-9]*.ipynb'))
    assert [f for f in files if f in nbs] == nbs, 'sidebar.yml must list the module notebooks in their order'
    assert ('Guides', [f for f in files if f.startswith('guides/')]) in secs
    for f in files: assert (ROOT / 'nbs' / f).exists(), f


def test_build(site):
    out, r = site
    assert not r['errors'], r['errors']
    for p in r['pages']: assert (out / p).is_file(), p
    assert {'index.html', 'dct.html', 'losses.html', 'guides/getting_started.html', 'guides/benchmarks.html'} <= set(r['pages'])
    assert r['figures'] >= 2, 'executing 00_dct and 02_losses gives figures'
    figs = list((out / 'figures').rglob('*.png'))
    assert figs and all(f.stat().st_size > 1000 for f in figs)
    index = json.loads((out / 'search.json').read_text())
    assert {e['url'].split('#')[0] for e in index} == set(r['pages'])
    api = json.loads((out / 'api.json').read_text())
    missing = {f'{m}.{n}' for m, names in _modules().items() for n in names if n not in api}
    assert not missing, f'exported names without an API entry: {sorted(missing)}'
    dct = (out / 'dct.html').read_text()
    assert '$$' in dct and 'show_doc(' not in dct and '#|' not in dct     # TeX left for MathJax; nbdev's cells hidden
    if (SITE / 'node_modules' / 'mathjax').exists(): assert r['mathjax'] == 'local' and (out / 'mathjax.js').stat().st_size > 100_000


def _missing() -> list:
    out = []
    if not Path(CHROMIUM).exists(): out.append(f'{CHROMIUM} (apt-get install -y chromium)')
    if not shutil.which('node'): out.append('node')
    if not (ROOT / 'tests' / 'browser' / 'node_modules' / 'playwright-core' / 'package.json').exists():
        out.append('tests/browser/node_modules/playwright-core')
    if not (SITE / 'node_modules' / 'mathjax' / 'es5' / 'tex-svg.js').exists(): out.append('tests/site/node_modules/mathjax')
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture
def artefacts():
    d = Path(os.environ.get('DCTKD_ARTIFACTS') or ROOT / 'tests' / 'artifacts') / 'site'
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        if f.is_file(): f.unlink()
    return d


def test_site_in_browser(site, artefacts, tmp_path):
    missing = _missing()
    if missing:
        msg = 'site browser test needs ' + ', '.join(missing) + '; run `bash tests/site/setup.sh`'
        if os.environ.get('DCTKD_REQUIRE_BROWSER'): pytest.fail(msg + ' (DCTKD_REQUIRE_BROWSER is set)')
        pytest.skip(msg)
    out, r = site
    port = _free_port()
    srv = subprocess.Popen([sys.executable, '-m', 'http.server', str(port), '--bind', '127.0.0.1', '--directory', str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f'http://127.0.0.1:{port}/'
    try:
        for _ in range(100):
            try: urllib.request.urlopen(base + 'index.html', timeout=2).close(); break
            except OSError: time.sleep(0.1)
        pages_file = tmp_path / 'pages.json'; pages_file.write_text(json.dumps(r['pages']))
        proc = subprocess.run(['node', str(SITE / 'check.js'), base, str(pages_file), str(artefacts)],
                              capture_output=True, text=True, timeout=180)
    finally:
        srv.terminate(); srv.wait(10)
    assert proc.stdout.strip(), proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    (artefacts / 'result.json').write_text(json.dumps(res, indent=1))
    assert res['ok'], res.get('error')
    assert not res['failedRequests'], res['failedRequests']
    pages = res['pages']
    assert set(pages) == set(r['pages'])
    headings = set()
    for p, info in pages.items():
        assert info['status'] == 200, p
        assert not info['errors'], (p, info['errors'])
        assert info['mathDone'], f'{p}: MathJax did not finish'
        assert info['rawDisplayMath'] == 0, f'{p}: raw $$ left in the rendered text'
        assert info['rawInlineMath'] == 0, f'{p}: raw $...$ left in the rendered text'
        assert info['mathErrors'] == 0, p
        assert [h for h in info['sidebar'] if h.endswith('.html')], p
        for img in info['images']: assert img['complete'] and img['w'] > 0, (p, img['src'])
        headings |= {h['text'] for h in info['headings']}
        for a in info['links']:                                          # internal links: the file and its anchor
            u = urllib.parse.urlsplit(a['href'])
            if not a['href'].startswith(base): continue
            target = urllib.parse.unquote(u.path[len('/'):]) or 'index.html'
            assert (out / target).is_file(), f'{p}: broken link {a["raw"]}'
            if u.fragment and target in pages:
                assert urllib.parse.unquote(u.fragment) in pages[target]['ids'], f'{p}: missing anchor {a["raw"]}'
    # sidebar order follows the notebooks
    assert pages['index.html']['sidebar'][:3] == ['index.html', 'dct.html', 'attention.html']
    # math typeset where the notebooks have it
    for p in ('dct.html', 'losses.html', 'distillers.html', 'guides/new_method.html'): assert pages[p]['mathElements'] > 0, p
    # every exported name has an API entry (a heading on its module's page)
    missing = {f'{m}.{n}' for m, names in _modules().items() for n in names if n not in headings}
    assert not missing, f'exported names without an API entry in the browser: {sorted(missing)}'
    # figures from the executed notebooks load
    assert sum(len(pages[p]['images']) for p in ('dct.html', 'losses.html')) >= 2
    # search
    assert res['search']['dct2'] and res['search']['dct2'][0].startswith('dct.html')
    assert any(u.startswith('guides/distributed.html') for u in res['search']['torchrun'])
    assert res['searchBoxHits'] > 0
    for f in ('home.png', 'dct.png'): assert (artefacts / f).stat().st_size > 10_000, f


def test_site_cli_help():
    "The `dctkd_site` console script's arguments (the build itself is tested above)."
    from fastcore.script import anno_parser
    from dctkd.tools.site import site_cli
    text = anno_parser(site_cli.__wrapped__).format_help()
    for opt in ('--out', '--execute', '--budget', '--mathjax'): assert opt in text
