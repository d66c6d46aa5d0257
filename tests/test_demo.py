"""`make demo`'s job: papermill executes the core notebooks with the project's own kernel, on any machine."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('name', ['00_dct', '01_attention', '02_losses'])
def test_papermill_runs_core_notebook(tmp_path, monkeypatch, name):
    import papermill as pm
    monkeypatch.delenv('MPLBACKEND', raising=False)   # the kernel must get Jupyter's inline backend
    out = tmp_path / f'{name}.ipynb'
    pm.execute_notebook(str(ROOT / 'nbs' / f'{name}.ipynb'), str(out), kernel_name='python3',
                        cwd=str(ROOT / 'nbs'), progress_bar=False)
    cells = json.loads(out.read_text())['cells']
    assert not any(o.get('output_type') == 'error' for c in cells for o in c.get('outputs', []))
    if name == '00_dct':   # the figures were drawn
        assert sum('image/png' in o.get('data', {}) for c in cells for o in c.get('outputs', [])) >= 2
