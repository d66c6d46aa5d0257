"""dctkd.data (images, toy, cache, datasets, download): the dataset layouts (read from fixtures these tests write themselves, by hand), transforms, the
memory-mapped cache against the PIL pipeline, loaders, toy scenes, and downloads from a local HTTP server; and the
file-handling safety: CIFAR pickles that would run code, toy markers that point elsewhere, a killed cache build's leftovers."""
import hashlib
import os
import pickle
import subprocess
import sys
import tarfile
import threading
import time
import warnings
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dctkd.data.cache import CachedDataset, build_cache, make_loader
from dctkd.data.datasets import get_dataset
from dctkd.data.download import download
from dctkd.data.images import (NORM_STATS, BadImageError, ChecksumError, DatasetNotFoundError, DownloadError, LabelError,
                               TransformSpec, UnsafePickleError, default_resize, default_workers, eval_transform, load_image,
                               resize_short, train_transform)
from dctkd.data.toy import TOY_CLASSES, TOY_LAYOUTS, make_toy_scenes

ROOT = Path(__file__).resolve().parents[1]
PAPER_MEAN, PAPER_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)   # from the issue / original configs
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- fixtures written by hand, in each official layout ------------------------------------------------------------
def _jpeg(path, size=(40, 30), seed=0):
    "A random-pixel JPEG of `size` (width, height) at `path`."
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=90)
    return path


ADE_TRAIN = {'ADE_train_00000003': 'street', 'ADE_train_00000001': 'bedroom', 'ADE_train_00000002': 'street',
             'ADE_train_00000005': 'misc', 'ADE_train_00000004': 'living_room'}
ADE_VAL = {'ADE_val_00000002': 'kitchen', 'ADE_val_00000001': 'street', 'ADE_val_00000003': 'bedroom'}


def write_ade20k(root):
    base = root / 'ADEChallengeData2016'
    for i, n in enumerate(ADE_TRAIN): _jpeg(base / 'images' / 'training' / f'{n}.jpg', (48 + i, 40), i)
    for i, n in enumerate(ADE_VAL): _jpeg(base / 'images' / 'validation' / f'{n}.jpg', (40, 44), 10 + i)
    lines = [f'{n} {c}' for n, c in list(ADE_VAL.items()) + list(ADE_TRAIN.items())]   # not sorted, val first
    (base / 'sceneCategories.txt').write_text('\n'.join(lines) + '\n')
    return root


SUN_CLASSES = ['/a/abbey', '/c/church/indoor', '/c/church/outdoor', '/z/zen_garden']


def write_sun397(root):
    files = {k: [f'{k}/sun_{k.strip("/").replace("/", "")}{j}.jpg' for j in range(3)] for k in SUN_CLASSES}
    for i, k in enumerate(SUN_CLASSES):
        for j, f in enumerate(files[k]): _jpeg(root / 'SUN397' / f.lstrip('/'), (50, 40 + j), 20 + 3 * i + j)
    parts = root / 'Partitions'; parts.mkdir(parents=True)
    (parts / 'ClassName.txt').write_text('\n'.join(SUN_CLASSES) + '\n')
    for p in (1, 2):   # partition 1 tests image 2 of each class, partition 2 image 0
        test = 2 if p == 1 else 0
        (parts / f'Training_0{p}.txt').write_text('\n'.join(f for k in SUN_CLASSES for j, f in enumerate(files[k]) if j != test) + '\n')
        (parts / f'Testing_0{p}.txt').write_text('\n'.join(files[k][test] for k in SUN_CLASSES) + '\n')
    return root, files


MIT_TRAIN = ['kitchen/k 1.jpg', 'bar/bar_1.jpg', 'airport_inside/a1.jpg', 'kitchen/k2.jpg', 'bar/bar_2.jpg', 'airport_inside/a2.jpg']
MIT_TEST = ['bar/bar_3.jpg', 'airport_inside/a3.jpg', 'kitchen/k3.jpg']


def write_mit67(root):
    sizes = [(50, 40), (40, 50), (64, 48)]
    for i, f in enumerate(MIT_TRAIN + MIT_TEST): _jpeg(root / 'Images' / f, sizes[i % 3], 40 + i)
    (root / 'TrainImages.txt').write_bytes(('\r\n'.join(MIT_TRAIN) + '\r\n').encode())   # Windows line ends
    (root / 'TestImages.txt').write_text('\n'.join(MIT_TEST) + '\n')
    return root


def write_cifar100(root, n_train=6, n_test=4, n_classes=3):
    "torchvision's on-disk format, with bytes keys and names as Python 2 pickles give them (protocol 4: no other globals)."
    base = root / 'cifar-100-python'; base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (('train', n_train), ('test', n_test)):
        imgs = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = [i % n_classes for i in range(n)]
        with open(base / split, 'wb') as f:
            pickle.dump({b'data': imgs.transpose(0, 3, 1, 2).reshape(n, -1), b'fine_labels': labels,
                         b'coarse_labels': [0] * n}, f, protocol=4)
        out[split] = (imgs, labels)
    with open(base / 'meta', 'wb') as f:
        pickle.dump({b'fine_label_names': [b'apple', b'bear', b'castle'][:n_classes]}, f, protocol=4)
    return root, out


def write_prepared_ade(root):
    "The original repository's ADE20K folder: '<name> <label>' lines."
    names = {'train': [('ADE_train_00000001', 'bedroom'), ('ADE_train_00000002', 'street')],
             'val': [('ADE_val_00000001', 'street')]}
    for s, rows in names.items():
        for i, (n, _) in enumerate(rows): _jpeg(root / s / f'{n}.jpg', seed=60 + i)
        (root / f'{s}.txt').write_text(''.join(f'{n} {c}\n' for n, c in rows))
    (root / 'scene_names.txt').write_text('bedroom\nstreet\n')
    return root


@pytest.fixture(scope='module')
def fx(tmp_path_factory):
    t = tmp_path_factory.mktemp('layouts')
    return dict(ade20k=write_ade20k(t / 'ade'), sun397=write_sun397(t / 'sun')[0], mit67=write_mit67(t / 'mit'),
                cifar100=write_cifar100(t / 'cifar')[0], prepared=write_prepared_ade(t / 'prep'), tmp=t)


# ---- layouts ---------------------------------------------------------------------------------------------------------
def test_ade20k_classes_are_sorted_union_of_all_labels_and_images_sorted_by_name(fx):
    tr = get_dataset('ade20k', fx['ade20k'], 'train', transform=None)
    va = get_dataset('ade20k', fx['ade20k'], 'val', transform=None)
    want = ['bedroom', 'kitchen', 'living_room', 'misc', 'street']          # 'kitchen' only occurs in val
    assert tr.classes == va.classes == want
    names = sorted(ADE_TRAIN)
    assert [f.stem for f in tr.files] == names and [f.parent.name for f in tr.files] == ['training'] * 5
    assert [tr.classes[t] for t in tr.targets] == [ADE_TRAIN[n] for n in names]
    assert [va.classes[t] for t in va.targets] == [ADE_VAL[n] for n in sorted(ADE_VAL)]
    # the dataset folder itself works as root too
    assert get_dataset('ade20k', fx['ade20k'] / 'ADEChallengeData2016', transform=None).files == tr.files


def test_sun397_partitions_class_names_and_list_order(fx):
    root = fx['sun397']
    tr = get_dataset('sun397', root, 'train', transform=None)
    te = get_dataset('sun397', root, 'test', transform=None)
    assert tr.classes == ['abbey', 'church-indoor', 'church-outdoor', 'zen_garden']
    assert (len(tr), len(te), tr.class_counts(), te.class_counts()) == (8, 4, [2, 2, 2, 2], [1, 1, 1, 1])
    listed = (root / 'Partitions' / 'Training_01.txt').read_text().split()
    assert [str(f.relative_to(root / 'SUN397')) for f in tr.files] == [l.lstrip('/') for l in listed]
    assert [tr.classes[t] for t in tr.targets] == [l.strip('/').split('/', 1)[1].rsplit('/', 1)[0].replace('/', '-') for l in listed]
    te2 = get_dataset('sun397', root, 'val', transform=None, partition=2)
    assert set(te2.files).isdisjoint(te.files) and len(te2) == 4
    with pytest.raises(ValueError, match='partition'): get_dataset('sun397', root, partition=11)


def test_mit67_lists_in_file_order_with_spaces_and_crlf(fx):
    tr = get_dataset('mit67', fx['mit67'], 'train', transform=None)
    te = get_dataset('mit67', fx['mit67'], 'test', transform=None)
    assert tr.classes == ['airport_inside', 'bar', 'kitchen']
    assert [str(f.relative_to(fx['mit67'] / 'Images')) for f in tr.files] == MIT_TRAIN
    assert [tr.classes[t] for t in tr.targets] == [l.split('/')[0] for l in MIT_TRAIN]
    assert (len(te), te.class_counts()) == (3, [1, 1, 1])
    img, label, idx = tr[0]
    assert img.size == (50, 40) and label == tr.class_to_idx['kitchen'] and idx == 0


def test_cifar100_reads_torchvision_pickles_exactly(fx, tmp_path):
    root, arrays = write_cifar100(tmp_path / 'c')
    tr = get_dataset('cifar100', root, 'train', transform=None)
    assert tr.classes == ['apple', 'bear', 'castle'] and tr.targets == arrays['train'][1]
    for i in range(len(tr)):
        img, label, idx = tr[i]
        assert np.array_equal(np.asarray(img), arrays['train'][0][i]) and (label, idx) == (arrays['train'][1][i], i)
    te = get_dataset('cifar100', root, 'val')
    x, _, _ = te[0]
    mean, std = (torch.tensor(v)[:, None, None] for v in NORM_STATS['cifar100'])
    expect = (torch.from_numpy(arrays['test'][0][0]).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(x, expect, rtol=0, atol=1e-6)        # eval: no resize, no crop, CIFAR statistics


class _RunsCommand:
    "Unpickling this runs `touch path` through os.system."
    def __init__(self, path): self.path = path
    def __reduce__(self): return (os.system, (f"touch '{self.path}'",))


class _TouchesPath:
    "Unpickling this calls pathlib.Path.touch(path)."
    def __init__(self, path): self.path = path
    def __reduce__(self): return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize('payload', [_RunsCommand, _TouchesPath])
def test_cifar100_pickles_that_would_run_code_are_refused_unrun(tmp_path, payload):
    pickle.loads(pickle.dumps(payload(tmp_path / 'proof')))                  # the payload is live: plain pickle runs it
    assert (tmp_path / 'proof').exists()
    root, arrays = write_cifar100(tmp_path / 'c')
    base, marker = root / 'cifar-100-python', tmp_path / 'pwned'
    genuine = (base / 'train').read_bytes()
    with open(base / 'train', 'wb') as f: pickle.dump({b'data': payload(marker), b'fine_labels': [0]}, f, protocol=4)
    with pytest.raises(UnsafePickleError) as e: get_dataset('cifar100', root, 'train')
    msg = str(e.value)
    assert f"{base / 'train'}: refused to load " in msg and 'arbitrary code' in msg and isinstance(e.value, ValueError)
    assert not marker.exists()
    assert len(get_dataset('cifar100', root, 'val')) == len(arrays['test'][1])   # the genuine files beside it still load
    (base / 'train').write_bytes(genuine)
    with open(base / 'meta', 'wb') as f: pickle.dump({'fine_label_names': [payload(marker)]}, f, protocol=2)
    with pytest.raises(UnsafePickleError, match='meta: refused to load'): get_dataset('cifar100', root, 'train')
    assert not marker.exists()


def test_prepared_layout_both_line_formats(fx, tmp_path):
    ade = get_dataset('ade20k', fx['prepared'], 'train', transform=None)     # auto: falls back to the prepared layout
    assert ade.classes == ['bedroom', 'street'] and ade.targets == [0, 1]
    assert [f.relative_to(fx['prepared']).as_posix() for f in ade.files] == ['train/ADE_train_00000001.jpg', 'train/ADE_train_00000002.jpg']
    root = tmp_path / 'p'
    for rel in ('train/bar/x 1.jpg', 'train/abbey/y.jpg', 'val/bar/z.jpg'): _jpeg(root / rel)
    (root / 'train.txt').write_text('train/bar/x 1.jpg\ntrain/abbey/y.jpg\n')
    (root / 'val.txt').write_text('val/bar/z.jpg\n')
    (root / 'scene_names.txt').write_text('abbey 0\nbar 1\n')
    ds = get_dataset('prepared', root, 'train', transform=None)
    assert ds.targets == [1, 0] and ds.files[0] == root / 'train/bar/x 1.jpg'
    assert get_dataset('mit67', root, 'val', transform=None, layout='prepared').targets == [1]


def test_order_is_deterministic(fx):
    for name in ('ade20k', 'sun397', 'mit67'):
        a, b = (get_dataset(name, fx[name], transform=None) for _ in range(2))
        assert a.files == b.files and a.targets == b.targets


# ---- bad input --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name,marker', [('ade20k', 'sceneCategories.txt'), ('sun397', 'ClassName.txt'),
                                         ('mit67', 'TrainImages.txt'), ('cifar100', 'cifar-100-python/meta')])
def test_missing_root_names_layout_and_download_command(tmp_path, name, marker):
    with pytest.raises(DatasetNotFoundError) as e: get_dataset(name, tmp_path / 'absent')
    msg = str(e.value)
    assert marker in msg and f'dctkd_download {name} {tmp_path / "absent"}' in msg and str(tmp_path / 'absent') in msg


def test_missing_files_are_named(fx, tmp_path):
    import shutil
    root = tmp_path / 'mit'; shutil.copytree(fx['mit67'], root)
    (root / 'TestImages.txt').unlink()
    with pytest.raises(DatasetNotFoundError, match='TestImages.txt'): get_dataset('mit67', root, 'val')
    (root / 'Images' / 'bar' / 'bar_2.jpg').unlink()
    with pytest.raises(DatasetNotFoundError, match=r'bar_2\.jpg is missing; 1 of the 6 images listed in .*TrainImages.txt'):
        get_dataset('mit67', root)


def test_labels_not_in_class_list_name_file_and_line(fx, tmp_path):
    import shutil
    sun = tmp_path / 'sun'; shutil.copytree(fx['sun397'], sun)
    with open(sun / 'Partitions' / 'Testing_01.txt', 'a') as f: f.write('/v/volcano/sun_x.jpg\n')
    with pytest.raises(LabelError, match=r"Testing_01.txt, line 5: class '/v/volcano'"): get_dataset('sun397', sun, 'val')
    mit = tmp_path / 'mit'; shutil.copytree(fx['mit67'], mit)
    (mit / 'TestImages.txt').write_text('bar/bar_3.jpg\nvolcano/v.jpg\n')
    with pytest.raises(LabelError, match=r"TestImages.txt, line 2: class 'volcano'"): get_dataset('mit67', mit, 'val')
    prep = tmp_path / 'prep'; shutil.copytree(fx['prepared'], prep)
    (prep / 'val.txt').write_text('ADE_val_00000001 volcano\n')
    with pytest.raises(LabelError, match=r"val.txt, line 1: label 'volcano'"): get_dataset('prepared', prep, 'val')
    ade = tmp_path / 'ade'; shutil.copytree(fx['ade20k'], ade)
    with open(ade / 'ADEChallengeData2016' / 'sceneCategories.txt', 'a') as f: f.write('ADE_train_00000009\n')
    with pytest.raises(ValueError, match=r'sceneCategories.txt, line 9'): get_dataset('ade20k', ade)
    root, _ = write_cifar100(tmp_path / 'c', n_classes=2)
    with open(root / 'cifar-100-python' / 'meta', 'wb') as f: pickle.dump({'fine_label_names': ['apple']}, f, protocol=4)
    with pytest.raises(LabelError, match=r'entry 1 has fine label 1'): get_dataset('cifar100', root)


def test_bad_images_name_their_path_or_are_skipped_and_counted(fx, tmp_path):
    import shutil
    root = tmp_path / 'mit'; shutil.copytree(fx['mit67'], root)
    truncated, garbage = root / 'Images' / 'bar' / 'bar_1.jpg', root / 'Images' / 'kitchen' / 'k2.jpg'
    truncated.write_bytes(truncated.read_bytes()[:400])
    garbage.write_bytes(b'not an image at all')
    ds = get_dataset('mit67', root)
    for f in (truncated, garbage):
        with pytest.raises(BadImageError, match=str(f)): ds[ds.files.index(f)]
    with pytest.warns(UserWarning, match='skipped 2 unreadable image'):
        ok = get_dataset('mit67', root, skip_bad=True, progress=False)
    assert len(ok) == 4 and sorted(p for p, _ in ok.skipped) == sorted([truncated, garbage])
    assert all(f not in ok.files for f in (truncated, garbage)) and [ok.classes[t] for t in ok.targets] == \
        [f.parent.name for f in ok.files]
    cache = tmp_path / 'cache'
    with pytest.raises(BadImageError, match='bar_1.jpg'): get_dataset('mit67', root, size=16, cache=cache, progress=False)
    assert [p.name for p in cache.iterdir() if not p.name.endswith('.lock')] == []      # nothing half-written
    with pytest.warns(UserWarning, match='skipped 2'):
        assert len(get_dataset('mit67', root, size=16, skip_bad=True, cache=cache, progress=False)) == 4


def test_argument_errors(fx):
    with pytest.raises(ValueError, match='unknown dataset'): get_dataset('places365', fx['mit67'])
    with pytest.raises(ValueError, match='unknown split'): get_dataset('mit67', fx['mit67'], 'dev')
    with pytest.raises(ValueError, match='transform must be'): get_dataset('mit67', fx['mit67'], transform='random')
    with pytest.raises(ValueError, match='cache needs a named transform'): get_dataset('mit67', fx['mit67'], transform=None, cache=True)
    with pytest.raises(ValueError, match='padding'): TransformSpec('eval', 32, padding=4)
    with pytest.raises(ValueError, match='unknown normalisation'): TransformSpec('eval', 32, norm='kinetics')


# ---- transforms --------------------------------------------------------------------------------------------------------
def _coord_image(w, h):
    "An image whose red channel is the column index and green the row index (so crops reveal their offsets)."
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0], a[..., 1] = np.arange(w)[None], np.arange(h)[:, None]
    return Image.fromarray(a)


def test_norm_presets_and_default_sizes():
    assert NORM_STATS['paper'] == (PAPER_MEAN, PAPER_STD) and NORM_STATS['imagenet'] == (IMAGENET_MEAN, IMAGENET_STD)
    assert (default_resize(224), default_resize(112), default_resize(64)) == (256, 128, 73)
    assert TransformSpec().short_side == 256 and TransformSpec(size=64).short_side == 73


@pytest.mark.parametrize('norm,mean,std', [('paper', PAPER_MEAN, PAPER_STD), ('imagenet', IMAGENET_MEAN, IMAGENET_STD)])
def test_normalisation_of_a_constant_image(norm, mean, std):
    v = (200, 100, 50)
    x = eval_transform(16, norm=norm)(Image.new('RGB', (30, 20), v))
    for c in range(3): torch.testing.assert_close(x[c], torch.full((16, 16), (v[c] / 255 - mean[c]) / std[c]), rtol=0, atol=1e-6)


def test_shapes_ranges_and_crop_geometry():
    img = _coord_image(100, 80)
    assert resize_short(img, 40).size == (50, 40) and resize_short(img, 0) is img
    for t, shape in [(train_transform(48), (3, 48, 48)), (eval_transform(48), (3, 48, 48)),
                     (eval_transform(48, ten_crop=True), (10, 3, 48, 48)), (train_transform(24, resize=0, padding=4), (3, 24, 24))]:
        x = t(img)
        assert x.shape == shape and x.dtype == torch.float32 and type(x) is torch.Tensor
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)); hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    x = train_transform(48)(img); assert lo - 1e-6 <= x.min() and x.max() <= hi + 1e-6
    # centre crop without resize: columns 40..59 and rows 30..49 of a 100×80 image
    c = (eval_transform(20, resize=0, norm='none')(img) * 255).round()
    assert torch.equal(c[0, 0], torch.arange(40, 60.)) and torch.equal(c[1, :, 0], torch.arange(30, 50.))
    tc = (eval_transform(20, resize=0, norm='none', ten_crop=True)(img) * 255).round()
    assert torch.equal(tc[0, 0, 0], torch.arange(0, 20.)) and torch.equal(tc[1, 0, 0], torch.arange(80, 100.))   # top-left, top-right
    assert torch.equal(tc[3, 1, :, 0], torch.arange(60, 80.)) and torch.equal(tc[4], c)                         # bottom-right, centre
    assert torch.equal(tc[5], tc[1].flip(-1))                                                                    # mirrored image's top-left
    # random crops are windows of the resized image, sometimes mirrored
    flips = 0
    for seed in range(20):
        torch.manual_seed(seed)
        r = (train_transform(20, resize=0, norm='none')(img) * 255).round()
        row = r[0, 0]
        flips += bool(row[0] > row[-1])
        row = row.flip(0) if row[0] > row[-1] else row
        assert torch.equal(row, torch.arange(row[0], row[0] + 20)) and 0 <= row[0] <= 80
        assert torch.equal(r[1, :, 0], torch.arange(r[1, 0, 0], r[1, 0, 0] + 20)) and 0 <= r[1, 0, 0] <= 60
    assert 3 <= flips <= 17


# ---- the cache -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('mode', ['train', 'eval', 'tencrop'])
def test_cached_items_equal_pil_items_bitwise_under_the_same_seed(fx, tmp_path, mode):
    pil = get_dataset('mit67', fx['mit67'], 'train', mode, size=24)
    fast = get_dataset('mit67', fx['mit67'], 'train', mode, size=24, cache=tmp_path, progress=False)
    for i in range(len(pil)):
        for seed in (i, 100 + i):
            torch.manual_seed(seed); a, ya, ia = pil[i]
            torch.manual_seed(seed); b, yb, ib = fast[i]
            assert b.dtype == torch.uint8 and (ya, ia) == (yb, ib) == (pil.targets[i], i)
            assert torch.equal(a, fast.batch_transform(b)), (mode, i, seed)
            assert torch.equal(a[None], fast.batch_transform(b[None]))      # batched: the same bits


def test_loaders_of_both_paths_give_identical_batches(fx, tmp_path):
    "End to end, with 2 workers: the cached loader normalises in the workers; same seed, same bits as the PIL loader."
    pil = get_dataset('mit67', fx['mit67'], 'train', size=24)
    fast = get_dataset('mit67', fx['mit67'], 'train', size=24, cache=tmp_path, progress=False)
    a, b = (list(make_loader(ds, 4, num_workers=2, seed=11)) for ds in (pil, fast))
    assert len(a) == len(b) == 2
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ya, yb) and torch.equal(xa, xb)


def test_cached_crop_matches_pil_for_explicit_crop_parameters(fx, tmp_path):
    ds = get_dataset('mit67', fx['mit67'], 'val', 'train', size=16, resize=20)
    fast = CachedDataset(ds, cache_dir=tmp_path, progress=False)
    for i, f in enumerate(ds.files):
        ref = np.asarray(load_image(f).resize(resize_short(load_image(f), 20).size, Image.BILINEAR))   # PIL, directly
        assert tuple(fast.shapes[i]) == ref.shape[:2] and min(ref.shape[:2]) == 20
        for top, left, flip in [(0, 0, False), (ref.shape[0] - 16, ref.shape[1] - 16, True), (2, 3, False)]:
            want = ref[top:top + 16, left:left + 16]
            want = want[:, ::-1] if flip else want
            assert np.array_equal(fast.crop(i, top, left, flip).permute(1, 2, 0).numpy(), want)
    with pytest.raises(ValueError, match='does not fit'): fast.crop(0, 100, 0)
    sizes = [resize_short(load_image(f), 20).size for f in ds.files]
    assert fast.data_path.stat().st_size == sum(3 * w * h for w, h in sizes)


def test_cifar_cached_padded_crops_equal_pil(tmp_path):
    root, _ = write_cifar100(tmp_path / 'c')
    pil = get_dataset('cifar100', root, 'train')
    fast = get_dataset('cifar100', root, 'train', cache=tmp_path / 'cache', progress=False)
    for i in range(len(pil)):
        torch.manual_seed(i); a, _, _ = pil[i]
        torch.manual_seed(i); b, _, _ = fast[i]
        assert torch.equal(a, fast.batch_transform(b))


def test_cache_is_reused_and_rebuilt_when_a_source_changes(fx, tmp_path):
    import shutil
    root = tmp_path / 'mit'; shutil.copytree(fx['mit67'], root)
    cache = tmp_path / 'cache'
    c1 = get_dataset('mit67', root, 'val', 'eval', size=16, cache=cache, progress=False)
    stamp = c1.data_path.stat().st_mtime_ns
    c1b = get_dataset('mit67', root, 'val', 'eval', size=16, cache=cache, progress=False)
    assert c1b.data_path == c1.data_path and c1b.data_path.stat().st_mtime_ns == stamp
    f = c1.source.files[1]
    _jpeg(f, Image.open(f).size, seed=999)                                 # new pixels, same size
    c2 = get_dataset('mit67', root, 'val', 'eval', size=16, cache=cache, progress=False)
    assert c2.data_path != c1.data_path and not c1.data_path.exists()
    ref = np.asarray(resize_short(load_image(f), c2.spec.short_side))
    assert np.array_equal(c2.image(1).permute(1, 2, 0).numpy(), ref)
    assert sorted(p.suffix for p in cache.iterdir()) == ['.lock', '.npz', '.u8']   # no temp files, no stale cache
    before = c2.data_path.stat().st_mtime_ns
    time.sleep(0.01)
    assert build_cache(c2.source, 19, cache, progress=False) != c2.index_path          # another size: another cache
    assert CachedDataset(c2.source, cache_dir=cache, rebuild=True, progress=False).data_path.stat().st_mtime_ns > before


def test_next_build_removes_a_killed_builds_temporaries_and_nothing_else(fx, tmp_path):
    cache = tmp_path / 'cache'
    child = f"""
import os
from dctkd.data.cache import build_cache
from dctkd.data.datasets import get_dataset
ds = get_dataset('mit67', {str(fx['mit67'])!r}, 'train', size=16)
load = type(ds).load
def dying(self, i):
    if i == 3: os._exit(9)                        # killed part-way: no finally runs, nothing is cleaned up
    return load(self, i)
type(ds).load = dying
build_cache(ds, 18, {str(cache)!r}, num_workers=0, progress=False)
"""
    r = subprocess.run([sys.executable, '-c', child], cwd=ROOT, timeout=180, capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    left = [p for p in cache.iterdir() if p.name.endswith('.dctkd-cache-tmp')]
    assert len(left) == 1 and left[0].name.startswith('.mit67-train-s18-'), sorted(p.name for p in cache.iterdir())
    others = [cache / 'notes.txt', cache / f'{left[0].name[:-len("dctkd-cache-tmp")]}tmp',     # not the cache's names
              cache / f'.mit67-val-s18-00000000-0123456789abcdef.u8.1.dctkd-cache-tmp',      # another cache's build
              tmp_path / left[0].name]                                                      # outside the cache folder
    for p in others: p.write_text('keep')
    ds = get_dataset('mit67', fx['mit67'], 'train', size=16)
    index = build_cache(ds, 18, cache, progress=False)
    assert not left[0].exists() and all(p.read_text() == 'keep' for p in others)
    assert sorted(p.name for p in cache.iterdir() if p not in others) == sorted(
        [index.name, index.with_suffix('.u8').name, index.stem.rsplit('-', 1)[0] + '.lock'])


def test_make_loader_batches_every_index_once_and_is_reproducible(fx, tmp_path):
    fast = get_dataset('mit67', fx['mit67'], 'train', size=16, cache=tmp_path, progress=False)
    dl = make_loader(fast, 4, num_workers=2, seed=7)
    assert dl.loader.persistent_workers and dl.loader.num_workers == 2 and not dl.loader.pin_memory
    runs = []
    for _ in range(2):
        batches = list(make_loader(fast, 4, num_workers=2, seed=7))
        xs, ys, idx = (torch.cat(t) for t in zip(*batches))
        assert xs.shape == (6, 3, 16, 16) and xs.dtype == torch.float32 and xs.device.type == 'cpu'
        assert sorted(idx.tolist()) == list(range(6)) and ys.tolist() == [fast.targets[i] for i in idx]
        runs.append((xs, idx))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    for ep in range(2):                                                     # persistent workers: a second epoch
        assert sorted(torch.cat([b[2] for b in dl]).tolist()) == list(range(6))
    pil = make_loader(get_dataset('mit67', fx['mit67'], 'val', size=16), 2, num_workers=0)
    x, y, i = next(iter(pil))
    assert x.shape == (2, 3, 16, 16) and i.tolist() == [0, 1]              # held-out split: in order
    assert 0 <= default_workers() <= 8


def test_default_cache_dir_and_pickling_for_spawned_workers(fx, tmp_path, monkeypatch):
    monkeypatch.setenv('DCTKD_CACHE', str(tmp_path / 'env-cache'))
    fast = get_dataset('mit67', fx['mit67'], 'val', 'tencrop', size=16, cache=True, progress=False)
    assert fast.data_path.parent == tmp_path / 'env-cache'
    fast[0]                                                                  # opens the memory map
    for ds in (fast, get_dataset('mit67', fx['mit67'], 'val', 'tencrop', size=16)):
        clone = pickle.loads(pickle.dumps(ds))                              # what a spawned worker receives
        assert getattr(clone, '_mm', None) is None and torch.equal(clone[0][0], ds[0][0])


# ---- toy scenes ------------------------------------------------------------------------------------------------------------
def _tree_digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file() and p.name != '.dctkd-toy.json'}


@pytest.fixture(scope='module')
def toys(tmp_path_factory):
    t = tmp_path_factory.mktemp('toy')
    return {lay: make_toy_scenes(t / lay, lay, n_classes=3, n_per_class=10, size=32, seed=1, progress=False) for lay in TOY_LAYOUTS}


def test_toy_scenes_in_every_layout_hold_the_same_dataset(toys):
    want = sorted(TOY_CLASSES[:3])
    pixels = {}
    for lay, root in toys.items():
        tr, va = get_dataset(lay, root, 'train', None), get_dataset(lay, root, 'val', None)
        assert tr.classes == va.classes == want
        assert (len(tr), len(va), tr.class_counts(), va.class_counts()) == (24, 6, [8] * 3, [2] * 3)
        pixels[lay] = {split: sorted((d.classes[d.targets[i]], hashlib.sha256(np.asarray(d.load(i)).tobytes()).hexdigest())
                                     for i in range(len(d))) for split, d in (('train', tr), ('val', va))}
    for lay in ('sun397', 'mit67', 'prepared'): assert pixels[lay] == pixels['ade20k'], lay       # same JPEGs everywhere
    jpeg = get_dataset('mit67', toys['mit67'], 'train', None)
    raw = get_dataset('cifar100', toys['cifar100'], 'train', None)            # CIFAR holds the raw pixels
    matched = set()
    for i in range(len(raw)):                                                   # each is one of the JPEGs, up to compression
        a = np.asarray(raw.load(i), np.float32)
        err = sorted((np.abs(a - np.asarray(jpeg.load(j), np.float32)).mean(), j) for j in range(len(jpeg))
                     if jpeg.targets[j] == raw.targets[i])
        assert err[0][0] < 0.4 * err[1][0], (i, err[:2])
        matched.add(err[0][1])
    assert len(matched) == len(raw) == len(jpeg)
    sun = get_dataset('sun397', toys['sun397'], 'train', None)
    assert (toys['sun397'] / 'SUN397' / 'r' / 'room' / 'indoor').is_dir() and 'room-indoor' in sun.classes
    parts = [get_dataset('sun397', toys['sun397'], 'val', None, partition=p).files for p in range(1, 11)]
    assert len({tuple(p) for p in parts}) > 1                                   # ten different partitions
    assert any(' ' in f.name for f in jpeg.files)                               # names with spaces, as in MIT67


def test_toy_scenes_are_deterministic_and_reused(tmp_path, toys):
    a = make_toy_scenes(tmp_path / 'a', 'mit67', 3, 10, 32, seed=1, progress=False)
    assert _tree_digest(a) == _tree_digest(toys['mit67'])
    b = make_toy_scenes(tmp_path / 'b', 'mit67', 3, 12, 32, seed=1, progress=False)    # more images: the first ones unchanged
    assert all(_tree_digest(b)[k] == v for k, v in _tree_digest(a).items() if k.startswith('Images/'))
    c = make_toy_scenes(tmp_path / 'c', 'mit67', 3, 10, 32, seed=2, progress=False)
    assert _tree_digest(c) != _tree_digest(a)
    stamp = (a / 'TrainImages.txt').stat().st_mtime_ns
    assert make_toy_scenes(a, 'mit67', 3, 10, 32, seed=1) == a and (a / 'TrainImages.txt').stat().st_mtime_ns == stamp
    make_toy_scenes(a, 'mit67', 2, 5, 32, seed=1, progress=False)               # other arguments: replaced
    assert get_dataset('mit67', a, transform=None).class_counts() == [4, 4]
    (tmp_path / 'foreign').mkdir(); (tmp_path / 'foreign' / 'x.txt').write_text('mine')
    with pytest.raises(FileExistsError): make_toy_scenes(tmp_path / 'foreign', progress=False)
    img = get_dataset('ade20k', make_toy_scenes(tmp_path / 'wide', 'ade20k', 2, 2, (60, 40), progress=False), transform=None)[0][0]
    assert img.size == (60, 40)


def test_toy_marker_entries_are_checked_before_anything_is_deleted(tmp_path):
    import json
    root = make_toy_scenes(tmp_path / 'toy', 'mit67', 2, 4, 16, progress=False)
    outside = tmp_path / 'outside'; outside.mkdir(); (outside / 'keep.txt').write_text('mine')   # a sibling of the root
    (root / 'a' / 'b').mkdir(parents=True)
    marker = root / '.dctkd-toy.json'
    good = json.loads(marker.read_text())
    for bad in ['../outside', str(outside), 'a/b', '..', 'a\\b', 'missing']:
        marker.write_text(json.dumps({**good, 'entries': good['entries'] + [bad]}))
        with pytest.raises(ValueError) as e: make_toy_scenes(root, 'mit67', 2, 5, 16, progress=False)
        assert f'{marker} lists entry {bad!r}' in str(e.value) and 'nothing was deleted' in str(e.value)
        assert (outside / 'keep.txt').read_text() == 'mine' and (root / 'a' / 'b').is_dir()
        assert all((root / n).exists() for n in good['entries'])                   # not even the valid entries
    marker.write_text(json.dumps(good))
    make_toy_scenes(root, 'mit67', 2, 5, 16, progress=False)                        # a genuine marker: replaced
    assert get_dataset('mit67', root, transform=None).class_counts() == [4, 4]
    assert (root / 'a' / 'b').is_dir() and (outside / 'keep.txt').exists()         # what it did not write stays


def test_small_cnn_separates_toy_classes_well_above_chance(tmp_path):
    root = make_toy_scenes(tmp_path / 'toy', 'mit67', n_classes=4, n_per_class=40, size=40, seed=0, progress=False)
    tr = get_dataset('mit67', root, 'train', size=32, cache=tmp_path / 'cache', progress=False)
    va = get_dataset('mit67', root, 'val', size=32, cache=tmp_path / 'cache', progress=False)
    assert (len(tr), len(va)) == (128, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)       # a tiny net: one thread is fastest, and robust to a busy machine
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4))
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        for _ in range(12):
            net.train()
            for x, y, _ in make_loader(tr, 32, num_workers=0, seed=0):
                loss = nn.functional.cross_entropy(net(x), y)
                opt.zero_grad(); loss.backward(); opt.step()
        net.eval()
        with torch.no_grad():
            pred, true = zip(*[(net(x).argmax(1), y) for x, y, _ in make_loader(va, 64, num_workers=0)])
        acc = (torch.cat(pred) == torch.cat(true)).float().mean().item()
    finally: torch.set_num_threads(threads)
    assert acc >= 2 * 0.25, acc


# ---- downloads, against a local server -------------------------------------------------------------------------------------
class Server:
    "A local HTTP server with Range support that records requests and can drop a connection part-way."
    def __init__(self, directory):
        self.dir, self.requests, self.cut_after, self.ignore_range = Path(directory), [], {}, False
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_GET(self):
                name, rng = self.path.lstrip('/'), self.headers.get('Range')
                srv.requests.append((name, rng))
                p = srv.dir / name
                if not p.is_file(): return self.send_error(404)
                data, start = p.read_bytes(), 0
                if rng and not srv.ignore_range:
                    start = int(rng.split('=')[1].split('-')[0])
                    if start >= len(data): return self.send_error(416)
                    self.send_response(206); self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
                else: self.send_response(200)
                body = data[start:]
                self.send_header('Content-Length', str(len(body))); self.end_headers()
                cut = srv.cut_after.pop(name, None)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None: self.close_connection = True

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True); self.thread.start()
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'

    def close(self): self.httpd.shutdown(); self.httpd.server_close()


@pytest.fixture()
def no_proxy(monkeypatch):
    for k in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('no_proxy', '127.0.0.1,localhost'); monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')


@pytest.fixture()
def mit_server(fx, tmp_path, no_proxy):
    d = tmp_path / 'served'; d.mkdir()
    with tarfile.open(d / 'indoorCVPR_09.tar', 'w') as t: t.add(fx['mit67'] / 'Images', arcname='Images')
    for f in ('TrainImages.txt', 'TestImages.txt'): (d / f).write_bytes((fx['mit67'] / f).read_bytes())
    s = Server(d)
    yield s
    s.close()


def _sha(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def test_download_resumes_a_partial_file_with_a_range_request(mit_server, fx, tmp_path):
    root = tmp_path / 'mit'
    tar = (mit_server.dir / 'indoorCVPR_09.tar').read_bytes()
    (root / 'downloads').mkdir(parents=True)
    (root / 'downloads' / 'indoorCVPR_09.tar.part').write_bytes(tar[:len(tar) // 3])
    pins = {f: _sha(mit_server.dir / f) for f in ('indoorCVPR_09.tar', 'TrainImages.txt', 'TestImages.txt')}
    assert download('mit67', root, mirror=mit_server.url, sha256=pins, progress=False) == root
    assert ('indoorCVPR_09.tar', f'bytes={len(tar) // 3}-') in mit_server.requests
    ref = get_dataset('mit67', fx['mit67'], transform=None)
    ds = get_dataset('mit67', root, transform=None)
    assert ds.classes == ref.classes and [f.relative_to(root) for f in ds.files] == [f.relative_to(fx['mit67']) for f in ref.files]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ds.files, ref.files))
    assert not (root / 'downloads').exists() and not list(root.glob('.extract-*'))
    n = len(mit_server.requests)                                              # already there: no network at all
    download('mit67', root, mirror='http://127.0.0.1:9', progress=False)
    assert len(mit_server.requests) == n


def test_interrupted_download_is_an_error_then_resumes(mit_server, tmp_path):
    root = tmp_path / 'mit'
    mit_server.cut_after['indoorCVPR_09.tar'] = 5000
    with pytest.raises(DownloadError, match='run again to resume'): download('mit67', root, mirror=mit_server.url, progress=False)
    part = root / 'downloads' / 'indoorCVPR_09.tar.part'
    assert part.stat().st_size == 5000 and not (root / 'Images').exists()
    download('mit67', root, mirror=mit_server.url, progress=False, keep_archives=True)
    assert ('indoorCVPR_09.tar', 'bytes=5000-') in mit_server.requests
    assert _sha(root / 'downloads' / 'indoorCVPR_09.tar') == _sha(mit_server.dir / 'indoorCVPR_09.tar')
    assert len(get_dataset('mit67', root, transform=None)) == len(MIT_TRAIN)


def test_server_ignoring_range_restarts_the_download(mit_server, tmp_path):
    root = tmp_path / 'mit'
    (root / 'downloads').mkdir(parents=True)
    (root / 'downloads' / 'indoorCVPR_09.tar.part').write_bytes(b'stale bytes from another file')
    mit_server.ignore_range = True
    download('mit67', root, mirror=mit_server.url, sha256=_sha(mit_server.dir / 'indoorCVPR_09.tar'), progress=False)
    assert len(get_dataset('mit67', root, transform=None)) == len(MIT_TRAIN)


def test_checksum_mismatch_is_an_error_and_extracts_nothing(mit_server, tmp_path):
    root = tmp_path / 'mit'
    with pytest.raises(ChecksumError, match='differs from the expected 0000'):
        download('mit67', root, mirror=mit_server.url, sha256='0' * 64, progress=False)
    assert [p.relative_to(root).as_posix() for p in root.rglob('*')] == ['downloads']   # no tree, no archive, no temp folder
    bad = tmp_path / 'garbage'; bad.mkdir()
    (mit_server.dir / 'indoorCVPR_09.tar').write_bytes(b'\0' * 10 + b'not a tar archive' * 100)
    with pytest.raises(DownloadError, match='not a readable archive'):
        download('mit67', bad, mirror=mit_server.url, progress=False)
    assert not (bad / 'Images').exists() and not list(bad.glob('.extract-*')) and not list(bad.rglob('*.tar'))


def test_archive_with_the_folder_one_level_down(mit_server, fx, tmp_path):
    with tarfile.open(mit_server.dir / 'indoorCVPR_09.tar', 'w') as t:
        t.add(fx['mit67'] / 'Images', arcname='indoorCVPR_09/Images')
    download('mit67', tmp_path / 'mit', mirror=mit_server.url, progress=False)
    assert get_dataset('mit67', tmp_path / 'mit', transform=None).classes == ['airport_inside', 'bar', 'kitchen']
    assert sorted(p.name for p in (tmp_path / 'mit').iterdir()) == ['Images', 'TestImages.txt', 'TrainImages.txt']


def test_unpinned_downloads_print_their_sha256(mit_server, tmp_path, capsys):
    download('mit67', tmp_path / 'mit', mirror=mit_server.url)
    out = capsys.readouterr().out
    for f in ('indoorCVPR_09.tar', 'TrainImages.txt', 'TestImages.txt'):
        assert f"{f}: sha256 {_sha(mit_server.dir / f)} (not pinned" in out
    assert 'MIT Indoor 67: 6 training images, 3 classes' in out


def test_cifar100_md5_and_zip_archives(fx, tmp_path, no_proxy):
    d = tmp_path / 'served'; d.mkdir()
    croot, _ = write_cifar100(tmp_path / 'c')
    with tarfile.open(d / 'cifar-100-python.tar.gz', 'w:gz') as t: t.add(croot / 'cifar-100-python', arcname='cifar-100-python')
    with zipfile.ZipFile(d / 'ADEChallengeData2016.zip', 'w') as z:
        for p in (fx['ade20k'] / 'ADEChallengeData2016').rglob('*'): z.write(p, p.relative_to(fx['ade20k']))
    with tarfile.open(d / 'SUN397.tar.gz', 'w:gz') as t: t.add(fx['sun397'] / 'SUN397', arcname='SUN397')
    with zipfile.ZipFile(d / 'Partitions.zip', 'w') as z:                       # loose files, no folder
        for p in (fx['sun397'] / 'Partitions').iterdir(): z.write(p, p.name)
    s = Server(d)
    try:
        with pytest.raises(ChecksumError, match='md5'):                          # not torchvision's official archive
            download('cifar100', tmp_path / 'c1', mirror=s.url, progress=False)
        download('cifar100', tmp_path / 'c1', mirror=s.url, sha256=_sha(d / 'cifar-100-python.tar.gz'), progress=False)
        assert get_dataset('cifar100', tmp_path / 'c1').classes == ['apple', 'bear', 'castle']
        download('ade20k', tmp_path / 'ade', mirror=s.url, progress=False)
        assert get_dataset('ade20k', tmp_path / 'ade', transform=None).files[0].name == 'ADE_train_00000001.jpg'
        download('sun397', tmp_path / 'sun', mirror=s.url, progress=False)
        assert len(get_dataset('sun397', tmp_path / 'sun', 'val', transform=None)) == 4
        with pytest.raises(ValueError, match='sha256 given for'):
            download('sun397', tmp_path / 'x', mirror=s.url, sha256={'wrong.zip': '0' * 64}, progress=False)
    finally: s.close()


def test_download_cli(mit_server, tmp_path):
    script = tmp_path / 'dctkd_download.py'       # what the console-script entry point runs
    script.write_text('import sys\nfrom dctkd.data.download import download_cli\nif __name__ == "__main__":\n    sys.exit(download_cli())\n')
    env = {**os.environ, 'no_proxy': '127.0.0.1,localhost', 'NO_PROXY': '127.0.0.1,localhost'}
    run = lambda *a: subprocess.run([sys.executable, str(script), *a], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    r = run('--help')
    assert r.returncode == 0 and '--mirror' in r.stdout and '--sha256' in r.stdout and '--keep-archives' in r.stdout
    assert '--keep_archives' not in r.stdout                        # the old spelling still works, unadvertised
    r = run('mit67', str(tmp_path / 'bad'), '--mirror', mit_server.url, '--sha256', '1' * 64)
    assert r.returncode != 0 and 'dctkd_download:' in r.stderr and 'differs from the expected' in r.stderr
    r = run('mit67', str(tmp_path / 'mit'), '--mirror', mit_server.url)
    assert r.returncode == 0, r.stderr
    assert len(get_dataset('mit67', tmp_path / 'mit', transform=None)) == len(MIT_TRAIN)
    assert not (tmp_path / 'mit' / 'downloads').exists()            # archives deleted by default
    for flag, dest in (('--keep-archives', 'kept'), ('--keep_archives', 'kept-old')):
        r = run('mit67', str(tmp_path / dest), '--mirror', mit_server.url, flag)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / dest / 'downloads' / 'indoorCVPR_09.tar').exists(), flag
