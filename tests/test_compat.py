"""The torchvision guard, each path in a fresh interpreter (it must run before torchvision is imported)."""
import subprocess
import sys
import textwrap


def _run(code):
    r = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1]


def test_torchvision_models_import_and_run_after_the_guard():
    out = _run("""
        import torch, dctkd.compat as c
        import torchvision
        m = torchvision.models.mobilenet_v2(num_classes=4).eval()
        with torch.no_grad(): y = m(torch.randn(1, 3, 32, 32))
        from torchvision.transforms import v2
        from torchvision.models.feature_extraction import create_feature_extractor
        assert y.shape == (1, 4)
        print(c.TORCHVISION_STATUS)
    """)
    assert out in ('extension', 'schemas-defined')


def test_does_nothing_when_the_extension_loads():
    # Stand in for a working extension: loading it registers the real schemas, as torchvision's _C does.
    out = _run("""
        import torch
        libs = []
        def fake_load_library(path):
            lib = torch.library.Library('torchvision', 'DEF')
            lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
            lib.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
            libs.append((path, lib))
        torch.ops.load_library = fake_load_library
        import dctkd.compat as c
        assert c._LIBRARY is None, 'the guard defined schemas although the extension loaded'
        assert len(libs) == 1 and libs[0][0].endswith(('_C.so', '_C.pyd')), libs
        print(c.TORCHVISION_STATUS)
    """)
    assert out == 'extension'


def test_defines_the_schemas_when_the_extension_cannot_load():
    out = _run("""
        import torch
        def broken(path): raise OSError('undefined symbol: fake')
        torch.ops.load_library = broken
        import dctkd.compat as c
        import torchvision
        assert c._LIBRARY is not None and hasattr(torch.ops.torchvision, 'nms') and hasattr(torch.ops.torchvision, 'qnms')
        print(c.TORCHVISION_STATUS)
    """)
    assert out == 'schemas-defined'


def test_leaves_an_already_imported_torchvision_alone():
    out = _run("""
        import sys, types
        sys.modules['torchvision'] = types.ModuleType('torchvision')
        import dctkd.compat as c
        assert c._LIBRARY is None
        print(c.TORCHVISION_STATUS)
    """)
    assert out == 'already-imported'
