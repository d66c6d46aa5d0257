"""The explorer in a real browser: JupyterLab (headless, 127.0.0.1, random port, token) and Debian's Chromium driven by
playwright-core (tests/browser/explore.js) open nbs/experiments/explore.ipynb, run all cells, move the stage slider,
and the attention figure changes. Screenshots go to $DCTKD_ARTIFACTS (default tests/artifacts/).

Needs /usr/bin/chromium, node and tests/browser/node_modules/playwright-core: `bash tests/browser/setup.sh` installs
them. Without them the test skips, unless DCTKD_REQUIRE_BROWSER is set (CI sets it after running setup.sh)."""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROWSER = ROOT / 'tests' / 'browser'
CHROMIUM = os.environ.get('CHROMIUM', '/usr/bin/chromium')


def _missing() -> list:
    "What the browser test needs and this machine lacks."
    out = []
    if not Path(CHROMIUM).exists(): out.append(f'{CHROMIUM} (apt-get install -y chromium)')
    if not shutil.which('node'): out.append('node')
    if not (BROWSER / 'node_modules' / 'playwright-core' / 'package.json').exists():
        out.append('tests/browser/node_modules/playwright-core (npm install in tests/browser)')
    try: import jupyterlab, ipywidgets  # noqa: F401
    except ImportError as e: out.append(f'python package {e.name}')
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _wait_http(url, proc, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None: raise RuntimeError(f'jupyter lab exited with {proc.returncode}')
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200: return
        except OSError: time.sleep(0.3)
    raise TimeoutError(f'jupyter lab did not answer within {timeout} s')


@pytest.fixture
def artefacts():
    d = Path(os.environ.get('DCTKD_ARTIFACTS') or ROOT / 'tests' / 'artifacts') / 'browser'
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():                                                  # only this run's files
        if f.is_file(): f.unlink()
    return d


def test_explorer_in_jupyterlab(tmp_path, artefacts):
    missing = _missing()
    if missing:
        msg = 'browser test needs ' + ', '.join(missing) + '; run `bash tests/browser/setup.sh`'
        if os.environ.get('DCTKD_REQUIRE_BROWSER'): pytest.fail(msg + ' (DCTKD_REQUIRE_BROWSER is set)')
        pytest.skip(msg)
    work = tmp_path / 'lab'; work.mkdir()
    shutil.copy(ROOT / 'nbs' / 'experiments' / 'explore.ipynb', work / 'explore.ipynb')   # the browser saves into the copy
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != 'MPLBACKEND'}       # Agg in the kernel would break inline plots
    for var, sub in (('JUPYTER_CONFIG_DIR', 'config'), ('JUPYTER_RUNTIME_DIR', 'runtime'), ('JUPYTERLAB_SETTINGS_DIR', 'settings'),
                     ('JUPYTERLAB_WORKSPACES_DIR', 'workspaces'), ('IPYTHONDIR', 'ipython')):
        env[var] = str(tmp_path / sub)
    news = tmp_path / 'settings' / '@jupyterlab' / 'apputils-extension' / 'notification.jupyterlab-settings'
    news.parent.mkdir(parents=True); news.write_text('{"fetchNews": "false", "checkForUpdates": false}')   # no news toast over the page
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--ip=127.0.0.1', f'--port={port}', '--ServerApp.port_retries=0',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={work}', '--LabApp.expose_app_in_browser=True',
           '--LabApp.news_url=', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate']
    if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.append('--allow-root')
    server_log = open(artefacts / 'jupyter-server.log', 'w')
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=server_log, stderr=subprocess.STDOUT)
    try:
        _wait_http(f'http://127.0.0.1:{port}/api/status?token={token}', proc, 40)
        url = f'http://127.0.0.1:{port}/lab/tree/explore.ipynb?token={token}'
        node_env = {**env, 'CHROMIUM': CHROMIUM, 'NODE_PATH': str(BROWSER / 'node_modules')}
        r = subprocess.run(['node', str(BROWSER / 'explore.js'), url, str(artefacts)], cwd=BROWSER, env=node_env,
                           capture_output=True, text=True, timeout=100)
        (artefacts / 'driver.log').write_text(r.stderr)
        lines = [l for l in r.stdout.splitlines() if l.startswith('{')]
        assert lines, f'the browser driver printed no result (exit {r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}'
        res = json.loads(lines[-1])
        assert res['ok'], f"browser run failed: {res.get('error')}\n(see {artefacts})"
        assert res['status_before'].endswith('stage 1/4') and res['status_after'].endswith('stage 2/4'), res
        assert res['readout'] == '2'
        assert res['before'] and res['after'] and res['before'] != res['after'], res       # the figure's bytes changed
        assert res['shot_before'] != res['shot_after'], res                                   # and so did what the page shows
        assert 'DCT loss (dct)' in res['table']
        for f in ('explore-before.png', 'explore-after.png', 'attention-before.png', 'attention-after.png'):
            assert (artefacts / f).stat().st_size > 1000
    finally:
        proc.terminate()
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        server_log.close()
