"""`make demo`'s job: papermill executes a notebook with the project's own kernel and Jupyter's inline figures, on any machine.
One notebook proves the wiring; every notebook's own cells already run in tests/test_notebooks.py."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_papermill_runs_a_core_notebook_with_inline_figures(tmp_path, monkeypatch):
    name = '00_dct'
    import papermill as pm
    monkeypatch.delenv('MPLBACKEND', raising=False)   # the kernel must get Jupyter's inline backend
    out = tmp_path / f'{name}.ipynb'
    pm.execute_notebook(str(ROOT / 'nbs' / f'{name}.ipynb'), str(out), kernel_name='python3',
                        cwd=str(ROOT / 'nbs'), progress_bar=False)
    cells = json.loads(out.read_text())['cells']
    assert not any(o.get('output_type') == 'error' for c in cells for o in c.get('outputs', []))
    assert sum('image/png' in o.get('data', {}) for c in cells for o in c.get('outputs', [])) >= 2
