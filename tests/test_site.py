"""The docs site built without Quarto (dctkd.site): the build itself, then the built site in a real browser.

The build runs once per session into a tmp folder. It reuses the outputs tests/test_notebooks.py saved while running every
notebook in the same session (`record_outputs`, into <pytest basetemp>/executed), so `make test` executes no notebook twice;
the notebooks the assertions below need and that no earlier test ran (a targeted run of this file) are executed here
($DCTKD_SITE_EXECUTED names a folder of outputs kept from an earlier run instead).
The browser test serves the site with python's http.server on 127.0.0.1 and opens every page in Debian's Chromium through
playwright-core (tests/site/check.js): pages load, internal links and anchors resolve, MathJax typesets the math (no
raw `$$` left), every exported name of every dctkd module has an API entry, code is highlighted, executed outputs and
figures show, the explorer is a static picture, the command-line page has every console script's --help, user and
maintainer pages are apart, the sidebar folds behind a toggle on a narrow screen, search answers with TeX-free snippets,
source links point at settings.ini's repository and the definition's line. Screenshots go to $DCTKD_ARTIFACTS/site/
(default tests/artifacts/site/, git-ignored); the test prints their paths.

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
# notebooks whose executed outputs the assertions read: run here only when test_notebooks.py did not save them already
from test_notebooks import SITE_NOTEBOOKS as EXECUTE  # noqa: E402

pytestmark = pytest.mark.xdist_group('site')        # with those notebooks' runs in tests/test_notebooks.py: one worker, their outputs


def _modules():
    "Every dctkd module a notebook exports to, with its `__all__`."
    out = {}
    for f in sorted((ROOT / 'dctkd').glob('*.py')):
        if f.stem.startswith('_'): continue
        m = importlib.import_module(f'dctkd.{f.stem}')
        out[f.stem] = list(getattr(m, '__all__', []))
    return out


def _settings():
    from configparser import ConfigParser
    cfg = ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    return cfg['DEFAULT']


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    from dctkd.tools.site import build_site
    out = tmp_path_factory.mktemp('site') / '_docs'
    # written by tests/test_notebooks.py (record_outputs); $DCTKD_SITE_EXECUTED: such a folder kept from an earlier run
    executed = Path(os.environ.get('DCTKD_SITE_EXECUTED') or tmp_path_factory.getbasetemp() / 'executed')
    saved = {p.name for p in executed.glob('*.ipynb.json')}
    need = [s for s in EXECUTE if f'{s}.ipynb.json' not in saved]
    t0 = time.time()
    report = build_site(out, execute=need, budget=300, executed=executed if saved else None)
    report['build_s'] = time.time() - t0
    print(f"site built in {report['build_s']:.1f} s; outputs of {len(saved)} notebooks reused from this test run, executed here: {need}")
    return out, report


def test_page_names_and_sidebar():
    from dctkd.tools.site import page_name, read_sidebar
    assert page_name('00_dct.ipynb') == 'dct.html' and page_name('index.ipynb') == 'index.html'
    assert page_name('guides/paper_tables.ipynb') == 'guides/paper_tables.html'
    secs = read_sidebar()
    files = [f for _, items in secs for f in items]
    nbs = sorted(p.name for p in (ROOT / 'nbs').glob('[0-9]*.ipynb'))
    listed = [f for f in files if f in nbs]
    assert listed == sorted(listed), 'sidebar.yml lists the module notebooks in their order (build_site adds unlisted ones)'
    assert ('Guides', [f for f in files if f.startswith('guides/')]) in secs
    assert [f for f in files if f.startswith('tools/')] == sorted(p.relative_to(ROOT / 'nbs').as_posix() for p in (ROOT / 'nbs' / 'tools').glob('*.ipynb'))
    for f in files: assert (ROOT / 'nbs' / f).exists(), f


def test_build(site):
    out, r = site
    assert not r['errors'], r['errors']
    for p in r['pages']: assert (out / p).is_file(), p
    assert {'index.html', 'dct.html', 'losses.html', 'guides/getting_started.html', 'guides/benchmarks.html', 'commands.html'} <= set(r['pages'])
    from dctkd.tools.site import page_name
    for nb in (ROOT / 'nbs').glob('[0-9]*.ipynb'): assert page_name(nb.name) in r['pages'], f'{nb.name} has no page'
    # the command-line page covers settings.ini's console_scripts, each with its real --help
    scripts = dict(x.split('=', 1) for x in _settings()['console_scripts'].split())
    assert r['commands'] == sorted(scripts)
    cmd = (out / 'commands.html').read_text()
    for n in scripts: assert f'usage: {n}' in cmd, n
    # executed outputs: every notebook the assertions need ran (here or in test_notebooks.py) and shows outputs
    for s in EXECUTE:
        page = page_name(s + '.ipynb')
        assert r['executed'].get(page, {}).get('outputs', 0) > 0, f'{page}: no executed outputs'
    assert r['figures'] >= 8, r['figures']
    assert r['maintainer'] == ['tools/readme.html', 'tools/site_execute.html', 'tools/site_render.html',
                               'tools/site_assets.html', 'tools/site.html']
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
    # search snippets carry no raw TeX: no $-delimited span holding a TeX command, no $$, while the pages do have TeX
    raw_tex = re.compile(r'\$\$[^$]*\\[a-zA-Z]+[^$]*\$\$|(?<![\\$])\$(?=\S)[^$\n]*\\[a-zA-Z]+[^$\n]*\$')
    assert raw_tex.search(dct)
    bad = [(e['url'], raw_tex.search(e['text'] + ' ' + e['heading']).group(0)) for e in index if raw_tex.search(e['text'] + ' ' + e['heading'])]
    assert not bad, bad[:5]


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
    # syntax highlighting: Pygments' token spans get their own colours from site.css
    for p in ('dct.html', 'losses.html', 'models.html'):
        hl = pages[p]['highlighted']; assert hl['tokens'] > 10 and hl['coloured'] >= 0.8 * hl['tokens'], (p, hl)
    # executed outputs: text, tables and figures of the notebooks, not only nbdev's API sections
    for s in EXECUTE:
        from dctkd.tools.site import page_name
        assert pages[page_name(s + '.ipynb')]['outputs'] > 0, f'{s}: no executed output on its page'
    for p in ('dct.html', 'losses.html', 'eval_report.html', 'figures.html'): assert pages[p]['outputImages'] > 0, p   # an evaluation's figures live in 13b_eval_report
    # the explorer: a static picture of its widgets (figures and controls), never the widget's repr
    ex = pages['explorer.html']
    assert ex['widgetReprs'] == 0 and all(i['widgetReprs'] == 0 for i in pages.values())
    assert ex['widgets'] and ex['widgets'][0]['kind'] == 'VBox', ex['widgets']
    w = ex['widgets'][0]
    assert w['controls'] >= 3 and w['h'] > 200 and len(w['images']) >= 2, w
    assert all(i['complete'] and i['w'] >= 200 for i in w['images']), w['images']
    # the command-line reference: every console script of settings.ini with its --help
    scripts = sorted(x.split('=', 1)[0] for x in _settings()['console_scripts'].split())
    cmd = pages['commands.html']
    assert set(scripts) <= {h['text'] for h in cmd['headings']}, cmd['headings']
    for n in scripts: assert any(t.startswith(f'usage: {n}') for t in cmd['pres']), n
    assert all(any(h.endswith('commands.html') for h in i['sidebar']) for i in pages.values())
    # API signatures: no raw Markdown link, no "Call self as a function."
    for p, i in pages.items():
        assert not i['rawMarkdownLinks'], (p, i['rawMarkdownLinks'][:3])
        assert not i['callSelf'], p
    # source links: settings.ini's git_url and branch, and the line that defines the documented name
    cfg = _settings()
    prefix = f"{cfg['git_url'].rstrip('/')}/blob/{cfg['branch']}/"
    links = [l for p, i in pages.items() for l in i['sourceLinks'] if p != 'commands.html']
    entry = {t.split(':')[1] for t in (x.split('=', 1)[1] for x in cfg['console_scripts'].split())}
    cmd_links = pages['commands.html']['sourceLinks']                              # the console scripts' entry points
    assert len(cmd_links) == len(scripts), cmd_links
    for l in cmd_links:
        file, _, line = l['href'][len(prefix):].partition('#L')
        lines, k = (ROOT / file).read_text().splitlines(), int(line) - 1
        while lines[k].lstrip().startswith('@'): k += 1
        assert re.match(r'def (\w+)', lines[k]) and re.match(r'def (\w+)', lines[k]).group(1) in entry, (l, lines[k])
    assert len(links) >= 100, len(links)
    for l in links:
        assert l['href'].startswith(prefix), l
        file, _, line = l['href'][len(prefix):].partition('#L')
        assert line.isdigit(), l
        name = l['name'].split('.')[-1]
        lines, k = (ROOT / file).read_text().splitlines(), int(line) - 1
        while lines[k].lstrip().startswith('@'): k += 1                   # a decorated definition starts at its decorator
        assert re.match(rf'\s*(async\s+)?(def|class)\s+{name}\b|\s*{name}\s*[:=]', lines[k]), (l, lines[k])
    # user and maintainer pages apart: tools/* only in the folded maintainers group, open on their own pages
    maint = {p for p in pages if p.startswith('tools/')}
    for p, i in pages.items():
        assert i['sidebarMaintainers'] and all('tools/' in h for h in i['sidebarMaintainers']), p
        assert not [h for h in i['sidebar'] if 'tools/' in h and h not in i['sidebarMaintainers']], p
        assert i['maintainersOpen'] == (p in maint), p
    # a narrow screen hides the sidebar behind the toggle, which opens and closes it
    n = res['narrow']
    assert n['wide'] == {'sidebar': True, 'toggle': False}, n
    assert n['before'] == {'sidebar': False, 'toggle': True}, n
    assert n['opened'] == {'sidebar': True, 'expanded': 'true'} and n['closed'] == {'sidebar': False}, n
    # search snippets as the search box shows them: no raw TeX
    for q, snips in res['snippets'].items():
        assert snips, q
        for t in snips: assert not re.search(r'\$\$[^$]*\\[a-zA-Z]+[^$]*\$\$|(?<![\\$])\$(?=\S)[^$]*\\[a-zA-Z]+[^$]*\$', t), (q, t)
    shots = ('home.png', 'dct.png', 'explorer.png', 'explorer-page.png', 'commands.png', 'narrow-sidebar.png', 'search.png')
    for f in shots: assert (artefacts / f).stat().st_size > 10_000, f
    print('site screenshots:', *(str(artefacts / f) for f in shots), sep='\n  ')


def test_site_cli_help():
    "The `dctkd_site` console script's arguments (the build itself is tested above)."
    from fastcore.script import anno_parser
    from dctkd.tools.site import site_cli
    text = anno_parser(site_cli.__wrapped__).format_help()
    for opt in ('--out', '--execute', '--budget', '--mathjax', '--executed'): assert opt in text
