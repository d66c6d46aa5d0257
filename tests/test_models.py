"""dctkd.models: tap shapes against the paper's table, bitwise taps, checkpoints in three layouts, the frozen teacher."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F

from dctkd.models import (DEFAULT_TAPS, PAPER_ARCHS, FrozenTeacher, TappedModel, build_model, default_taps, load_weights,
                          num_classes_of, tap_shapes)
from dctkd.runs import save_model
import torchvision  # after dctkd (its compat guard)

R18 = [(64, 56), (128, 28), (256, 14), (512, 7)]
R50 = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
MNV2 = [(24, 56), (32, 28), (96, 14), (1280, 7)]
PAPER_TABLE = {'resnet18': (R18, 512), 'resnet34': (R18, 512), 'resnet50': (R50, 2048), 'resnet101': (R50, 2048),
               'resnet152': (R50, 2048), 'mobilenet_v2': (MNV2, 1280)}   # original-method.md §3.1-3.2


def _expected(arch, size):
    stages, pooled = PAPER_TABLE[arch]
    return [(2, c, s * size // 224, s * size // 224) for c, s in stages] + [(2, pooled)]


@pytest.mark.parametrize('size', [224, 64])
@pytest.mark.parametrize('arch', PAPER_ARCHS)
def test_tap_shapes_match_the_paper_table(arch, size):
    assert set(PAPER_TABLE) == set(PAPER_ARCHS)
    assert tap_shapes(arch, size, batch_size=2) == _expected(arch, size)


@pytest.mark.parametrize('arch', ['resnet18', 'mobilenet_v2'])
def test_meta_shapes_equal_a_real_forward(arch):
    net = build_model(arch, 7).eval()
    with torch.no_grad(): _, feats = net(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == tap_shapes(net, 64, batch_size=2) == _expected(arch, 64)


@pytest.mark.parametrize('arch', ['resnext50_32x4d', 'wide_resnet50_2', 'efficientnet_b0', 'efficientnet_b3', 'convnext_tiny',
                                  'regnet_y_800mf', 'mobilenet_v3_large', 'mobilenet_v3_small'])
def test_default_taps_of_other_families_are_the_four_strides_and_a_vector(arch):
    shapes = tap_shapes(arch, 224)
    assert [s[-1] for s in shapes[:4]] == [56, 28, 14, 7] and all(len(s) == 4 for s in shapes[:4])
    assert len(shapes[4]) == 2


def test_every_default_family_matches_some_torchvision_model():
    names = torchvision.models.list_models(module=torchvision.models)
    import fnmatch
    for pat in DEFAULT_TAPS: assert fnmatch.filter(names, pat), pat


def test_resnet_taps_are_bitwise_a_manual_forward_and_logits_the_unmodified_models():
    torch.manual_seed(0)
    plain = torchvision.models.resnet50(num_classes=9).eval()
    net = build_model('resnet50', 9).eval()
    net.model.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, feats = net(x)
        h = plain.maxpool(plain.relu(plain.bn1(plain.conv1(x))))
        manual = []
        for layer in (plain.layer1, plain.layer2, plain.layer3, plain.layer4):
            h = layer(h); manual.append(h)
        manual.append(torch.flatten(plain.avgpool(h), 1))
        assert all(torch.equal(a, b) for a, b in zip(feats, manual))
        assert torch.equal(logits, plain(x))
    assert all((f >= 0).all() for f in feats[:4])      # post-ReLU block outputs


def test_mobilenet_v2_taps_are_the_feature_slices_of_the_original():
    torch.manual_seed(0)
    net = build_model('mobilenet_v2', 5).eval()
    m, x = net.model, torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, feats = net(x)
        a0 = m.features[0:4](x); a1 = m.features[4:7](a0); a2 = m.features[7:14](a1); a3 = m.features[14:](a2)
        a4 = torch.flatten(F.adaptive_avg_pool2d(a3, 1), 1)
        for got, want in zip(feats, [a0, a1, a2, a3, a4]): assert torch.equal(got, want)
        assert torch.equal(logits, m.classifier(a4))


def test_head_replacement_gives_num_classes():
    for arch in PAPER_ARCHS[:1] + ['mobilenet_v2', 'efficientnet_b0']:
        net = build_model(arch, 13)
        assert num_classes_of(net) == 13
        with torch.no_grad(): assert net.eval()(torch.randn(1, 3, 32, 32))[0].shape == (1, 13)


def _body_equal(a, b, skip):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith(skip))


def test_torchvision_layout_loads_and_head_is_fresh_or_kept(tmp_path):
    src = torchvision.models.resnet18()                     # 1000 classes, like torchvision's files
    torch.save(src.state_dict(), tmp_path / 'r18.pth')
    net = build_model('resnet18', 67, pretrained=tmp_path / 'r18.pth')
    assert _body_equal(net.model, src, 'fc.') and net.model.fc.out_features == 67
    same = build_model('resnet18', 1000, pretrained=str(tmp_path / 'r18.pth'))
    assert _body_equal(same.model, src, '@') and torch.equal(same.model.fc.weight, src.fc.weight)


def test_places365_layout_loads(tmp_path):
    src = torchvision.models.resnet50(num_classes=365)
    ck = {'epoch': 90, 'arch': 'resnet50', 'best_prec1': 54.7, 'state_dict': {'module.' + k: v for k, v in src.state_dict().items()}}
    torch.save(ck, tmp_path / 'resnet50_places365.pth.tar')
    net = build_model('resnet50', 67, pretrained=tmp_path / 'resnet50_places365.pth.tar')
    assert _body_equal(net.model, src, 'fc.') and num_classes_of(net) == 67
    full = build_model('resnet50', 365, pretrained=tmp_path / 'resnet50_places365.pth.tar')
    assert torch.equal(full.model.fc.weight, src.fc.weight)


def test_dctkd_layout_round_trip_atomic_and_never_overwritten(tmp_path):
    net = build_model('mobilenet_v2', 11)
    p = save_model(net, tmp_path / 'student.pt')
    assert sorted(os.listdir(tmp_path)) == ['student.pt']            # no temp file left behind
    ck = torch.load(p, weights_only=True)
    assert ck['arch'] == 'mobilenet_v2' and ck['num_classes'] == 11 and ck['taps'] == default_taps('mobilenet_v2')
    back = build_model('mobilenet_v2', 11, pretrained=p)
    assert _body_equal(back.model, net.model, '@')
    with pytest.raises(FileExistsError, match='overwrite=True'):
        save_model(net, p)
    save_model(net, p, overwrite=True)


@pytest.mark.parametrize('src_arch, dst_arch, msg', [
    ('resnet34', 'resnet18', 'not in resnet18'),
    ('resnet50', 'wide_resnet50_2', 'shape mismatch'),
    ('mobilenet_v2', 'resnet18', 'missing in the file'),
])
def test_mismatched_checkpoint_lists_keys_and_names_the_architecture(tmp_path, src_arch, dst_arch, msg):
    torch.save(torchvision.models.get_model(src_arch).state_dict(), tmp_path / 'w.pth')
    with pytest.raises(ValueError, match=msg) as e:
        build_model(dst_arch, 10, pretrained=tmp_path / 'w.pth')
    assert f'looks like {src_arch}' in str(e.value) and str(tmp_path / 'w.pth') in str(e.value)


def test_unreadable_or_missing_checkpoint(tmp_path):
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='cannot read checkpoint'):
        build_model('resnet18', 3, pretrained=tmp_path / 'junk.pth')
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        build_model('resnet18', 3, pretrained=tmp_path / 'nope.pth')


def test_imagenet_uses_torchvision_weights_enum_v1_and_replaces_head(monkeypatch):
    fake = torchvision.models.resnet18().state_dict()
    asked = []
    def get_state_dict(self, *a, **k):
        asked.append(self); return fake
    monkeypatch.setattr(torchvision.models.WeightsEnum, 'get_state_dict', get_state_dict)
    net = build_model('resnet18', 67, pretrained='imagenet')
    assert asked == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1]
    assert torch.equal(net.model.layer4[1].conv2.weight, fake['layer4.1.conv2.weight']) and num_classes_of(net) == 67
    monkeypatch.setattr(torchvision.models.WeightsEnum, 'get_state_dict', lambda self, *a, **k: torchvision.models.resnet50().state_dict())
    build_model('resnet50', 5, pretrained='imagenet:V2')
    with pytest.raises(ValueError, match="no ImageNet weights 'V9'.*IMAGENET1K_V1"):
        build_model('resnet18', 5, pretrained='imagenet:v9')


def test_frozen_teacher_stays_eval_and_gets_no_gradient():
    holder = torch.nn.ModuleDict({'student': build_model('resnet18', 4), 'teacher': FrozenTeacher(build_model('resnet34', 4))})
    holder.train()
    t = holder['teacher']
    assert not t.training and not any(m.training for m in t.modules())
    assert not any(p.requires_grad for p in t.parameters())
    x = torch.randn(2, 3, 32, 32)
    logits, feats = t(x)
    assert not logits.requires_grad and not any(f.requires_grad for f in feats)
    s_logits, _ = holder['student'](x)
    F.kl_div(F.log_softmax(s_logits, 1), F.softmax(logits, 1), reduction='batchmean').backward()
    assert all(p.grad is None for p in t.parameters())
    bn = t.model.model.bn1
    before = bn.running_mean.clone(); t(x)
    assert torch.equal(bn.running_mean, before)          # eval mode: statistics untouched


def test_frozen_teacher_half_precision_and_inference_mode():
    t = FrozenTeacher(build_model('resnet18', 4), dtype=torch.bfloat16)
    logits, feats = t(torch.randn(2, 3, 32, 32))
    assert logits.dtype == torch.float32 and feats[0].dtype == torch.bfloat16
    ti = FrozenTeacher(build_model('resnet18', 4), inference_mode=True)
    logits, _ = ti(torch.randn(2, 3, 32, 32))
    assert logits.is_inference()


def test_channels_last_autocast_and_compile():
    torch.manual_seed(0)
    net = build_model('resnet18', 4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref_logits, ref = net(x)
        cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
        l2, f2 = cl(x.to(memory_format=torch.channels_last))
        assert all(f.is_contiguous(memory_format=torch.channels_last) for f in f2[:4])
        assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(ref, f2))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            l3, f3 = net(x)
        assert all(f.dtype == torch.bfloat16 for f in f3[:4])
        assert all(torch.allclose(a.float(), b, atol=0.1, rtol=0.1) for a, b in zip(f3[:4], ref[:4]))
        l4, f4 = torch.compile(net, backend='eager')(x)
        assert torch.equal(l4, ref_logits) and all(torch.equal(a, b) for a, b in zip(f4, ref))
    torch._dynamo.reset()


@pytest.mark.skipif(not os.environ.get('DCTKD_SLOW'), reason='inductor compilation takes minutes on 2 cores; set DCTKD_SLOW=1')
def test_inductor_compile_gives_the_same_taps():
    net = build_model('resnet18', 4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref_logits, ref = net(x)
        l, f = torch.compile(net)(x)
    assert torch.allclose(l, ref_logits, atol=1e-4) and all(torch.allclose(a, b, atol=1e-4) for a, b in zip(f, ref))
    torch._dynamo.reset()


def test_bad_names_get_suggestions():
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet81'; did you mean"):
        build_model('resnet81', 3)
    with pytest.raises(ValueError, match=r"has no module 'layer5'.*close names"):
        build_model('resnet18', 3, taps=['layer5'])
    with pytest.raises(ValueError, match='no default taps'):
        build_model('vit_b_16', 3)
    net = TappedModel(torchvision.models.resnet18(num_classes=2), ['layer1', 'fc:in'])
    net.model.forward = lambda x: net.model.fc(torch.zeros(x.shape[0], 512))     # a forward that skips layer1
    with pytest.raises(RuntimeError, match=r"taps \['layer1'\] were not reached"):
        net(torch.zeros(1, 3, 8, 8))


def test_tap_shapes_in_train_mode_keeps_the_mode_and_handles_1x1_maps():
    net = build_model('resnet18', 3).train()
    assert tap_shapes(net, 32)[3] == (1, 512, 1, 1)       # a batch of 1 at 1×1 would break BN in train mode
    assert net.training and all(m.training for m in net.modules())
