"""dctkd.viz: extracted attention of a real (tiny) run, the figures, and the explorer driven headless (no browser)."""
import csv
import datetime
import hashlib
import io
import json
import re
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dctkd.attention import attention_map
from dctkd.data.datasets import get_dataset
from dctkd.data.toy import make_toy_scenes, render_toy_scene
from dctkd.losses import dct_loss, dct_stage_distances
from dctkd.models import build_model
from dctkd.config import make_config
from dctkd.runs import read_checkpoint
from dctkd.train import fit
from dctkd import viz
from dctkd.explorer import AttentionExplorer
from dctkd.viz import (attention_figure, curves_figure, evaluation_figures, extract_attention, extract_cli, load_model, prepare_image, spectra_figure, stage_features, stage_loss_figure)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A real run: one batch of a ResNet-18 on 32-px toy scenes (4 classes)."
    tmp = tmp_path_factory.mktemp('viz')
    make_toy_scenes(tmp / 'toy', layout='mit67', n_classes=4, n_per_class=8, size=40, progress=False)
    run = fit(make_config(dataset='toy', root=str(tmp / 'toy'), out=str(tmp / 'runs'), image_size=32, resize=36,
                          batch_size=8, epochs=1, max_batches=1, workers=0, progress=False, arch='resnet18', name='tiny'))
    return run


def _tree(folder):
    "path -> sha1 of every file under `folder`."
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# extract_attention

def test_extract_attention_counts_shapes_labels(tiny):
    n = 5
    ext = extract_attention(tiny, 'train', n)
    assert ext.parent == tiny / 'attention' and ext.name.endswith('-train')
    # an independent recomputation: the checkpoint's weights, the dataset with its evaluation transform
    ck = read_checkpoint(tiny)
    net = build_model(ck['arch'], len(ck['classes']), taps=ck['taps']); net.model.load_state_dict(ck['student']); net.eval()
    ds = get_dataset('mit67', ck['config']['root'], 'train', 'eval', size=32, resize=36, progress=False)
    x = torch.stack([ds[i][0] for i in range(n)])
    with torch.no_grad(): logits, feats = net(x)
    maps = [attention_map(f).numpy() for f in feats[:4]]
    z = np.load(ext / 'attention.npz')
    assert sorted(z.files) == sorted(['images', 'index', 'target', 'prediction', 'classes', 'stage1', 'stage2', 'stage3', 'stage4'])
    assert [z[f'stage{l}'].shape for l in range(1, 5)] == [(n, 8, 8), (n, 4, 4), (n, 2, 2), (n, 1, 1)]
    for l in range(4): np.testing.assert_allclose(z[f'stage{l + 1}'], maps[l], rtol=1e-4, atol=1e-6)
    assert z['images'].shape == (n, 32, 32, 3) and z['images'].dtype == np.uint8
    assert list(z['index']) == list(range(n))
    assert list(z['target']) == [int(t) for t in ds.targets[:n]]
    assert list(z['prediction']) == logits.argmax(1).tolist()
    assert list(z['classes']) == list(ck['classes'])
    # overlays: one per image and stage, [crop | overlay] enlarged ×4 (32 -> 128 px) over a two-line caption strip
    stages = sorted(p.name for p in ext.iterdir() if p.is_dir())
    assert stages == ['stage1', 'stage2', 'stage3', 'stage4']
    for s in stages: assert sorted(p.name for p in (ext / s).iterdir()) == [f'{i:05d}.jpg' for i in range(n)]
    im = np.asarray(Image.open(ext / 'stage3' / '00002.jpg'))
    assert im.shape == (128 + 2 * 14 + 4, 256, 3)
    left = im[:128:4, :128:4].astype(float)
    assert np.abs(left - z['images'][2]).mean() < 12                       # the left half is the crop (JPEG tolerance)
    assert im[128:, :].max() > 128                                         # the caption strip holds (white) text
    assert np.abs(im[:128, 128:].astype(float) - im[:128, :128]).mean() > 5   # the right half is coloured by the map
    # predictions.csv and the manifest agree with the arrays
    rows = list(csv.DictReader(open(ext / 'predictions.csv')))
    assert [int(r['index']) for r in rows] == list(range(n))
    assert [r['target_name'] for r in rows] == [ck['classes'][t] for t in z['target']]
    assert [r['prediction_name'] for r in rows] == [ck['classes'][p] for p in z['prediction']]
    m = json.loads((ext / 'manifest.json').read_text())
    assert (m['n'], m['split'], m['arch'], m['stages']['stage1']) == (n, 'train', 'resnet18', [8, 8])
    assert not [p for p in (tiny / 'attention').iterdir() if p.name.startswith('.')]   # no temporary folder left


def test_extract_attention_never_overwrites(tiny):
    first = extract_attention(tiny, 'val', 2)
    before = _tree(first)
    second = extract_attention(tiny, 'val', indices=[3, 1])
    assert second != first and second.parent == first.parent
    assert _tree(first) == before
    assert sorted(p.name for p in (second / 'stage1').iterdir()) == ['00001.jpg', '00003.jpg']
    assert list(np.load(second / 'attention.npz')['index']) == [3, 1]


def test_extract_attention_is_atomic(tiny, monkeypatch, tmp_path):
    def boom(*a, **k): raise OSError('disk full')
    monkeypatch.setattr(np, 'savez_compressed', boom)
    with pytest.raises(OSError, match='disk full'): extract_attention(tiny, 'val', 2, out=tmp_path / 'ext')
    assert list((tmp_path / 'ext').iterdir()) == []                      # nothing half-written is left behind


def test_extract_cli(tiny, tmp_path, capsys):
    assert extract_cli([str(tiny), '--split', 'val', '--n', '2', '--out', str(tmp_path)]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder.parent == tmp_path and len(list((folder / 'stage4').iterdir())) == 2
    with pytest.raises(SystemExit): extract_cli([str(tiny), '--split', 'val', '--indices', '999'])
    assert 'outside' in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# figures

def test_spectra_figure_dc_corner_shared_scale_and_loss():
    x, _ = prepare_image(render_toy_scene('forest', 80, 5), 64)
    ft = stage_features(load_model('resnet34'), x)[1]
    fs = stage_features(load_model('resnet18'), x)[1]
    maps = {'t': [attention_map(f)[0] for f in ft], 's': [attention_map(f)[0] for f in fs]}
    for t in ('dct', 'fft-real', 'fft-abs'):
        fig = spectra_figure(maps, t, stages=[0, 1])
        d = dct_stage_distances(fs, ft, transform=t)[0]
        for r in range(2):
            axs = fig.axes[3 * r: 3 * r + 3]
            spec = axs[0].images[0].get_array()
            assert spec[0, 0] == spec.min()                                  # DC (0 after mean removal) in the corner
            assert axs[0].images[0].get_clim() == axs[1].images[0].get_clim()   # one colour scale per stage
            assert axs[2].get_title().endswith(f"{float(d[r]):.3f}")           # difference norm = the loss's stage term
            assert f"log|{t}|" in axs[0].get_title()


def test_stage_loss_and_attention_figures():
    d = {'a': torch.tensor([0.5, 1.0, 2.0, 0.25]), 'b': torch.tensor([1.0, 0.0, 0.5, 0.5])}
    fig = stage_loss_figure(d, 'teacher')
    np.testing.assert_allclose(sorted(p.get_height() for c in fig.axes[0].containers for p in c), sorted([*d['a'].tolist(), *d['b'].tolist()]))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ['a: 3.750', 'b: 2.000']
    maps = {'m': [torch.rand(8, 8), torch.rand(4, 4)], 'n': [torch.rand(8, 8), torch.rand(4, 4)]}
    fig = attention_figure(maps, np.zeros((32, 32, 3), np.uint8))
    assert len(fig.axes) == 2 * 3
    assert [ax.get_title().splitlines()[-1] for ax in fig.axes[1:3]] == ['stage 1 (8×8)', 'stage 1 (8×8)']
    assert fig.axes[4].get_title() == 'm\nstage 2 (4×4)'


def test_curves_and_evaluation_figures(tiny, tmp_path):
    other = tmp_path / 'other'; other.mkdir()
    (other / 'metrics.csv').write_text('epoch,val_top1,train_loss\n1,10,2\n2,20,1.5\n3,,1\n')
    fig = curves_figure([tiny, other], ['val_top1', 'train_loss'])
    assert [l.get_label() for l in fig.axes[0].lines] == ['tiny', 'other']
    assert np.isnan(fig.axes[0].lines[1].get_ydata()[2]) and list(fig.axes[1].lines[1].get_ydata()) == [2, 1.5, 1]
    with pytest.raises(KeyError, match='no column'): curves_figure([other], ['val_top5'])
    res = {'confusion': torch.tensor([[3, 1], [0, 2]]), 'per_class': torch.tensor([75., 100.])}
    cm, pc = evaluation_figures(res, ['a', 'b'])
    assert cm.axes and pc.axes
    assert viz.confusion_figure is viz.__dict__['confusion_figure'] and 'per_class_figure' in viz.__all__


# ---------------------------------------------------------------------------------------------------------------
# the explorer, headless: every control changes the state and the figures

PHOTOS = {'street': render_toy_scene('street', 72, 1), 'coast': render_toy_scene('coast', 72, 2)}


@pytest.fixture(scope='module')
def _explorer(tiny):
    ds = get_dataset('mit67', read_checkpoint(tiny)['config']['root'], 'val', None, progress=False)
    ex = AttentionExplorer(['resnet34', 'resnet18', 'mobilenet_v2'], dataset=ds, photos=PHOTOS, size=32)
    assert ex.error is None, ex.error
    return ex


@pytest.fixture
def explorer(_explorer):
    "The module's explorer with its controls set to one known state, so each test holds alone and in any order (pytest-xdist)."
    ex = _explorer
    ex.models.value = ('resnet34 (untrained)', 'resnet18 (untrained)', 'mobilenet_v2 (untrained)')
    ex.reference.value = 'resnet34 (untrained)'
    ex.source.value, ex.photo.value = 'photo', 'street'
    ex.transform.value, ex.norm.value, ex.size.value, ex.stage.value = 'dct', 'imagenet', 32, 2
    assert ex.error is None and ex.state['key'] == ('photo', 'street'), ex.error
    return ex


def _expected_loss(ex, student, transform=None, norm=None, image=None, size=None):
    "dct_loss of `student` against the reference on the same image, computed here without the explorer."
    img = image if image is not None else PHOTOS[ex.photo.value]
    x, _ = prepare_image(img, size or ex.size.value, norm=norm or ex.norm.value)
    fs = stage_features(ex.loaded[student], x)[1]
    ft = stage_features(ex.loaded[ex.reference.value], x)[1]
    return float(dct_loss(fs, ft, transform=transform or ex.transform.value))


def test_explorer_shows_dct_loss(explorer):
    ex = explorer
    ex.source.value = 'photo'
    assert ex.state['key'] == ('photo', ex.photo.value)
    for n in ('resnet18 (untrained)', 'mobilenet_v2 (untrained)'):
        assert ex.state['losses'][n] == pytest.approx(_expected_loss(ex, n), rel=1e-5)
        assert f"<b>{ex.state['losses'][n]:.4f}</b>" in ex.table.value
        np.testing.assert_allclose(ex.state['distances'][n].sum(), ex.state['losses'][n], rtol=1e-5)
    bars = sorted(p.get_height() for c in ex.figures['loss'].axes[0].containers for p in c)
    np.testing.assert_allclose(bars, sorted(torch.cat(list(ex.state['distances'].values())).tolist()), rtol=1e-6)


def test_explorer_stage(explorer):
    ex = explorer
    seen = set()
    for s, side in zip((1, 2, 3, 4), (8, 4, 2, 1)):
        before = (ex.attention_image.value, ex.spectra_image.value, ex.loss_image.value)
        ex.stage.value = s
        assert ex.state['stage'] == s and ex.error is None
        assert ex.figures['attention'].axes[1].get_title().splitlines()[-1] == f"stage {s} ({side}×{side})"
        assert ex.figures['spectra'].axes[0].get_title().endswith(f"stage {s} log|{ex.transform.value}|")
        assert ex.figures['attention'].axes[1].images[0].get_array().shape == (32, 32, 3)
        after = (ex.attention_image.value, ex.spectra_image.value, ex.loss_image.value)
        if s != 1: assert all(a != b for a, b in zip(after, before))
        seen.add(hashlib.sha1(after[0]).hexdigest())
    assert len(seen) == 4 and ex.stage.max == 4
    ex.stage.value = 2


def test_explorer_transform(explorer):
    ex = explorer
    losses = {}
    for t in ('fft-real', 'fft-abs', 'dct'):
        before = ex.spectra_image.value
        ex.transform.value = t
        assert ex.state['transform'] == t and ex.spectra_image.value != before
        assert f"({t})" in ex.figures['loss'].axes[0].get_title() and f"DCT loss ({t})" in ex.table.value
        losses[t] = ex.state['losses']['resnet18 (untrained)']
        assert losses[t] == pytest.approx(_expected_loss(ex, 'resnet18 (untrained)', t), rel=1e-5)
    assert len({round(v, 6) for v in losses.values()}) == 3


def test_explorer_norm_and_size(explorer):
    ex = explorer
    l0 = ex.state['losses']['mobilenet_v2 (untrained)']
    ex.norm.value = 'paper'
    assert ex.state['norm'] == 'paper'
    l1 = ex.state['losses']['mobilenet_v2 (untrained)']
    assert l1 != l0 and l1 == pytest.approx(_expected_loss(ex, 'mobilenet_v2 (untrained)', norm='paper'), rel=1e-5)
    ex.norm.value = 'imagenet'
    ex.size.value = 64
    assert ex.state['crop'].shape == (64, 64, 3)
    assert [tuple(a.shape) for a in ex.state['maps']['resnet34 (untrained)']] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert ex.state['losses']['resnet18 (untrained)'] == pytest.approx(_expected_loss(ex, 'resnet18 (untrained)', size=64), rel=1e-5)
    ex.size.value = 32


def test_explorer_image_sources(explorer):
    ex = explorer
    ex.source.value = 'photo'; ex.photo.value = 'street'
    a = ex.state['crop'].copy()
    ex.photo.value = 'coast'
    assert ex.state['key'] == ('photo', 'coast') and not np.array_equal(a, ex.state['crop'])
    assert ex.figures['attention'].get_suptitle().startswith('coast')
    np.testing.assert_array_equal(ex.state['crop'], prepare_image(PHOTOS['coast'], 32)[1])
    ex.source.value = 'dataset'
    assert ex.index.layout.display is None and ex.photo.layout.display == 'none'   # only the controls that apply
    ex.index.value = 3
    assert ex.state['key'] == ('dataset', 3) and ex.state['target'] == ex.dataset.targets[3]
    assert f"GT: {ex.dataset.classes[ex.dataset.targets[3]]}" in ex.figures['attention'].get_suptitle()
    # an uploaded file (what the browser's FileUpload sends)
    buf = io.BytesIO(); Image.fromarray(render_toy_scene('forest', 50, 9)).save(buf, 'PNG')
    ex.upload.value = ({'name': 'mine.png', 'type': 'image/png', 'size': len(buf.getvalue()), 'content': memoryview(buf.getvalue()),
                        'last_modified': datetime.datetime.now(datetime.timezone.utc)},)
    assert ex.source.value == 'upload' and ex.state['key'][:2] == ('upload', 'mine.png') and ex.error is None
    np.testing.assert_array_equal(ex.state['crop'], prepare_image(render_toy_scene('forest', 50, 9), 32)[1])
    ex.upload.value = ({'name': 'bad.png', 'type': 'image/png', 'size': 3, 'content': memoryview(b'bad'),
                        'last_modified': datetime.datetime.now(datetime.timezone.utc)},)
    assert ex.error is not None and 'Error' in ex.status.value                # shown, not raised
    ex.source.value = 'photo'
    assert ex.error is None


def test_explorer_models_and_reference(explorer, tiny):
    ex = explorer
    ex.models.value = ('resnet34 (untrained)', 'resnet18 (untrained)')
    assert ex.state['models'] == ['resnet34 (untrained)', 'resnet18 (untrained)']
    assert len(ex.figures['attention'].axes) == 3 and list(ex.state['losses']) == ['resnet18 (untrained)']
    ex.reference.value = 'resnet18 (untrained)'
    assert ex.state['reference'] == 'resnet18 (untrained)' and list(ex.state['losses']) == ['resnet34 (untrained)']
    assert ex.state['losses']['resnet34 (untrained)'] == pytest.approx(_expected_loss(ex, 'resnet34 (untrained)'), rel=1e-5)
    name = ex.add_model(str(tiny))                                          # a trained run beside untrained networks
    assert name == 'tiny' and 'tiny' in ex.state['models'] and ex.error is None
    assert ex.state['losses']['tiny'] == pytest.approx(_expected_loss(ex, 'tiny'), rel=1e-5)
    assert ex.add_model('no_such_arch') is None and 'no_such_arch' in ex.status.value
    ex.reference.value = 'resnet34 (untrained)'
    ex.models.value = ('resnet34 (untrained)', 'resnet18 (untrained)', 'mobilenet_v2 (untrained)')
    assert ex.error is None


def test_explorer_on_a_run_with_its_dataset(tiny):
    ex = AttentionExplorer([tiny, 'resnet18'], dataset='auto', photos={})
    assert ex.error is None and ex.source.options == ('dataset', 'upload')
    assert (ex.size.value, ex.norm.value, ex.state['models']) == (32, 'imagenet', ['tiny', 'resnet18 (untrained)'])
    assert ex.loaded['resnet18 (untrained)'].classes == ['0', '1', '2', '3']
    assert 'pred: ' in ex.figures['attention'].axes[1].get_title()


def test_explore_notebook_with_a_run(tiny, tmp_path):
    "The experiment notebook, executed by papermill with a run folder as its parameter."
    pm = pytest.importorskip('papermill')
    out = tmp_path / 'explore-out.ipynb'
    pm.execute_notebook(str(ROOT / 'nbs' / 'experiments' / 'explore.ipynb'), str(out), parameters={'run': str(tiny)},
                        kernel_name='python3', progress_bar=False, cwd=str(tmp_path))
    nb = json.loads(out.read_text())
    text = json.dumps([c.get('outputs', []) for c in nb['cells']])
    assert 'application/vnd.jupyter.widget-view+json' in text               # the explorer was displayed
    plain = ' '.join(re.sub(r'\s+', ' ', ''.join(o['data']['text/plain'])) for c in nb['cells'] for o in c.get('outputs', [])
                     if 'text/plain' in o.get('data', {}))                  # pprint wraps a long list over lines
    assert f"['{tiny}', 'resnet18']" in plain                                # the models: the run, then its architecture untrained
    assert "'resnet18 (untrained)': [" in plain                             # its stage distances against the run's student
