"""The quickstart notebook (`make demo`) end to end through papermill, on tiny settings."""
import pytest
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_trains_evaluates_and_reports(tmp_path, monkeypatch):
    import papermill as pm
    monkeypatch.delenv('MPLBACKEND', raising=False)      # the kernel must use Jupyter's inline backend
    out = tmp_path / 'demo'
    pm.execute_notebook(str(ROOT / 'nbs/experiments/quickstart.ipynb'), str(tmp_path / 'quickstart.ipynb'), kernel_name='python3',
                        cwd=str(ROOT / 'nbs/experiments'), progress_bar=False,
                        parameters=dict(out=str(out), n_per_class=12, image_size=64, epochs=1, teacher_epochs=1, max_batches=2))
    runs = sorted(p.name for p in (out / 'runs' / 'toy-scenes').iterdir())
    assert runs == ['baseline', 'dct', 'dct-plus-kd', 'teacher']
    table = (out / 'results.md').read_text().splitlines()
    assert table[0].startswith('| model |') and [r.split('|')[1].strip() for r in table[2:]] == ['teacher', 'baseline', 'DCT', 'DCT + KD']
    assert all(0 <= float(r.split('|')[4]) <= 100 for r in table[2:])
    cells = json.loads((tmp_path / 'quickstart.ipynb').read_text())['cells']
    pngs = sum('image/png' in o.get('data', {}) for c in cells for o in c.get('outputs', []))
    assert pngs >= 4                                       # curves, attention, spectra, per-stage loss
    assert not any(o.get('output_type') == 'error' for c in cells for o in c.get('outputs', []))
    from PIL import Image
    for name in ('attention.png', 'spectra.png'):                # the figures are also saved beside the runs
        with Image.open(out / name) as im:
            assert im.format == 'PNG' and min(im.size) > 100, (name, im.size)
