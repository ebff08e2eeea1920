import math
import os

import pytest
import torch
import torchvision

import yolact
from backbone import DCN, ResNetBackbone
from data.config import cfg, set_cfg
from tests.test_config import ORIGINAL_CONFIGS
from utils.checkpoint import CheckpointError, load_state_dict_file

pytestmark = pytest.mark.usefixtures('restore_cfg')

HERE = os.path.dirname(__file__)


def reference_keys(config_name):
    """name -> (shape, dtype) as the original's Yolact(cfg).state_dict() has them."""
    ref = {}
    with open(os.path.join(HERE, 'data', 'checkpoint_keys', f'{config_name}.txt')) as f:
        for line in f:
            if line.startswith('#'):
                continue
            name, shape, dtype = line.rstrip('\n').split('\t')
            ref[name] = ([int(s) for s in shape.strip('[]').split(',') if s.strip()], dtype)
    return ref


@pytest.mark.parametrize('config_name', ORIGINAL_CONFIGS)
def test_state_dict_matches_the_original(config_name):
    set_cfg(config_name)
    net = yolact.Yolact(cfg)
    mine = {k: (list(v.shape), str(v.dtype).replace('torch.', '')) for k, v in net.state_dict().items()}
    ref = reference_keys(config_name)
    assert sorted(mine) == sorted(ref)
    assert {k: mine[k] for k in ref} == ref


def test_priors_hand_computed():
    priors = yolact.make_priors(2, 3, [[1, 0.5, 2]], [24], max_size=550, use_pixel_scales=True,
                                preapply_sqrt=False, use_square_anchors=True)
    assert priors.shape == (2 * 3 * 3, 4) and priors.dtype == torch.float32
    # first cell (row 0, col 0): centre (0.5/3, 0.5/2), ratio 1
    assert priors[0].tolist() == pytest.approx([0.5 / 3, 0.25, 24 / 550, 24 / 550])
    # ratio 1/2: w = 24 * sqrt(0.5) / 550, and h = w (square anchors of the published models)
    w = 24 * math.sqrt(0.5) / 550
    assert priors[1].tolist() == pytest.approx([0.5 / 3, 0.25, w, w])
    # cells run along the row first: index 3 is row 0, col 1
    assert priors[3, :2].tolist() == pytest.approx([1.5 / 3, 0.25])
    assert priors[9, :2].tolist() == pytest.approx([0.5 / 3, 0.75])
    rect = yolact.make_priors(1, 1, [[4]], [2], max_size=10, use_pixel_scales=False,
                              preapply_sqrt=False, use_square_anchors=False)
    assert rect[0].tolist() == pytest.approx([0.5, 0.5, 4.0, 1.0])


def small_resnet50(max_size=128):
    set_cfg('yolact_resnet50_config')
    cfg.max_size = max_size
    return yolact.Yolact(cfg)


def test_train_mode_outputs_and_cached_priors():
    torch.manual_seed(0)
    net = small_resnet50()
    net.init_weights(backbone_path=None)
    net.train()
    out = net(torch.randn(2, 3, 128, 128))
    num_priors = 3 * (16 ** 2 + 8 ** 2 + 4 ** 2 + 2 ** 2 + 1)
    assert out['loc'].shape == (2, num_priors, 4)
    assert out['conf'].shape == (2, num_priors, 81)
    assert out['mask'].shape == (2, num_priors, 32)
    assert out['priors'].shape == (num_priors, 4)
    assert out['proto'].shape == (2, 32, 32, 32)
    assert out['segm'].shape == (2, 80, 16, 16)
    assert out['mask'].abs().max() <= 1  # tanh coefficients
    assert out['proto'].min() >= 0  # relu prototypes
    again = net(torch.randn(1, 3, 128, 128))['priors']
    assert again.data_ptr() == out['priors'].data_ptr()  # cached per size and device


def test_freeze_bn():
    net = small_resnet50()
    net.bn_frozen = True
    net.train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training and not m.weight.requires_grad for m in bns)
    net.freeze_bn(True)
    assert all(m.training and m.weight.requires_grad for m in bns)


def test_save_load_round_trip_and_compatibility_rules(tmp_path):
    torch.manual_seed(1)
    net = small_resnet50()
    path = str(tmp_path / 'yolact_resnet50_1_10.pth')
    net.save_weights(path)
    state = torch.load(path, weights_only=True)
    # Old checkpoints: a stray 'backbone.layer1...' copy and more FPN downsample layers.
    state['backbone.layer1.0.conv1.weight'] = torch.zeros(1)
    state['fpn.downsample_layers.2.weight'] = torch.zeros(1)
    torch.save(state, path)
    other = small_resnet50()
    other.load_weights(path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k


def test_loading_another_configs_checkpoint_names_the_keys(tmp_path):
    net = small_resnet50()
    path = str(tmp_path / 'r50.pth')
    net.save_weights(path)
    set_cfg('yolact_darknet53_config')
    dark = yolact.Yolact(cfg)
    with pytest.raises(CheckpointError) as err:
        dark.load_weights(path)
    msg = str(err.value)
    assert 'missing' in msg and 'unexpected' in msg and 'backbone.' in msg and '\n' not in msg


def test_init_backbone_from_torchvision_state_dict(tmp_path):
    tv = torchvision.models.resnet50()
    path = str(tmp_path / 'resnet50_tv.pth')
    torch.save(tv.state_dict(), path)
    backbone = ResNetBackbone([3, 4, 6, 3])
    untouched = backbone.init_backbone(load_state_dict_file(path), source=path)
    assert untouched == []
    assert torch.equal(backbone.layers[2][5].conv2.weight, tv.layer3[5].conv2.weight)
    assert torch.equal(backbone.bn1.running_var, tv.bn1.running_var)


def test_resnet_width_scales_every_stage():
    """width=32 halves the stem and every stage; the default is the standard (torchvision) ResNet-18."""
    from backbone import BasicBlock
    standard = ResNetBackbone([2, 2, 2, 2], block=BasicBlock)
    tv = torchvision.models.resnet18().state_dict()
    assert standard.channels == [64, 128, 256, 512] and standard.conv1.weight.shape == tv['conv1.weight'].shape
    half = ResNetBackbone([2, 2, 2, 2], block=BasicBlock, width=32)
    assert half.channels == [32, 64, 128, 256]
    assert half.conv1.weight.shape == (32, 3, 7, 7)
    assert half.layers[3][0].conv2.weight.shape == (256, 256, 3, 3)
    outs = half(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 64, 128, 256] and outs[-1].shape[-1] == 2


def test_head_norm_groups_normalises_the_heads_and_protonet():
    """head_norm_groups puts a GroupNorm after each conv of the heads and the protonet, but not after
    the last protonet conv (its output are the prototypes); the outputs keep their shapes."""
    set_cfg('yolact_resnet18_synthetic_config')
    cfg.head_norm_groups = 0
    plain = yolact.Yolact(cfg)
    x = torch.randn(2, 3, 96, 96)
    plain_out = plain.train()(x)
    assert not [m for m in plain.modules() if isinstance(m, torch.nn.GroupNorm)]
    cfg.head_norm_groups = 4
    net = yolact.Yolact(cfg)
    norms = lambda m: [n for n in m.modules() if isinstance(n, torch.nn.GroupNorm)]
    convs = lambda m: [n for n in m.modules() if isinstance(n, torch.nn.Conv2d)]
    assert len(norms(net.proto_net)) == len(convs(net.proto_net)) - 1
    assert isinstance(list(net.proto_net)[-1], torch.nn.Conv2d)
    head = net.prediction_layers[0]
    assert len(norms(head.upfeature)) == len(convs(head.upfeature)) == 1
    assert len(norms(head.conf_extra)) == 1 and isinstance(head.bbox_extra, torch.nn.Identity)
    assert all(n.num_groups == 4 for n in norms(net))
    out = net.train()(x)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in plain_out.items()}
    # Conv then GroupNorm (default affine 1, 0): each (image, group) comes out standardised.
    level = torch.randn(2, cfg.fpn.num_features, 12, 12)
    groups = net.proto_net[:2](level).reshape(2, 4, -1)
    assert torch.allclose(groups.mean(-1), torch.zeros(2, 4), atol=1e-4)
    assert torch.allclose(groups.var(-1, unbiased=False), torch.ones(2, 4), atol=1e-2)


def test_init_backbone_rejects_a_foreign_file(tmp_path):
    path = str(tmp_path / 'other.pth')
    torch.save({'foo.weight': torch.ones(2)}, path)
    with pytest.raises(ValueError, match='none of its 1 tensors match'):
        ResNetBackbone([3, 4, 6, 3]).init_backbone(load_state_dict_file(path), source=path)


def test_dcn_with_zero_offsets_is_a_half_weighted_conv():
    torch.manual_seed(0)
    dcn = DCN(4, 6, kernel_size=3, stride=2, padding=1)
    with torch.no_grad():
        dcn.bias.uniform_()
    x = torch.randn(1, 4, 9, 9)
    expected = 0.5 * torch.nn.functional.conv2d(x, dcn.weight, None, stride=2, padding=1) \
        + dcn.bias.view(1, -1, 1, 1)
    assert torch.allclose(dcn(x), expected, atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_dcn_runs_under_cpu_autocast(dtype):
    """torchvision's CPU deform_conv2d has no reduced-precision kernel: YOLACT++ with --amp on a CPU."""
    torch.manual_seed(0)
    dcn = DCN(4, 6)
    with torch.no_grad():
        dcn.conv_offset_mask.weight.normal_(0, 0.1)  # real offsets
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    with torch.autocast('cpu', dtype=dtype):
        out = dcn(torch.nn.functional.conv2d(x, torch.ones(4, 4, 1, 1)))  # a reduced-precision input
    out.float().sum().backward()
    assert out.dtype == torch.float32 and torch.isfinite(x.grad).all() and dcn.weight.grad is not None
    with torch.no_grad():
        assert torch.allclose(out, dcn(torch.nn.functional.conv2d(x, torch.ones(4, 4, 1, 1))), atol=0.1)


def test_batched_inference_at_550_on_cpu():
    torch.manual_seed(0)
    set_cfg('yolact_base_config')
    net = yolact.Yolact(cfg)
    net.init_weights(backbone_path=None)
    with torch.no_grad():
        net.prediction_layers[0].conf_layer.weight.mul_(25)  # random weights: get some detections
    net.eval()
    with torch.inference_mode():
        dets = net(torch.randn(2, 3, 550, 550))
    assert len(dets) == 2
    for det in dets:
        d = det['detection']
        assert d is not None and d['box'].shape[1] == 4
        assert d['mask'].shape[1] == 32 and d['proto'].shape == (138, 138, 32)
        assert len(d['class']) == len(d['score']) <= cfg.max_num_detections


def test_eval_under_bf16_autocast_detects_in_float32():
    torch.manual_seed(0)
    net = small_resnet50()
    net.init_weights(backbone_path=None)
    with torch.no_grad():
        net.prediction_layers[0].conf_layer.weight.mul_(25)
    net.eval()
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        det = net(torch.randn(1, 3, 128, 128))[0]['detection']
    assert det is not None
    assert det['box'].dtype == torch.float32 and det['score'].dtype == torch.float32
    assert det['proto'].dtype == torch.float32


# ----------------------------------------------------------------------------- config as a value

def _outputs(config, size: int):
    """A Yolact of `config` with seeded weights: its raw outputs and its postprocessed detections
    on a seeded batch (everything as plain tensors, to compare bit for bit)."""
    from layers.output_utils import postprocess
    torch.manual_seed(0)
    net = yolact.Yolact(config)
    net.init_weights(backbone_path=None)
    with torch.no_grad():
        net.prediction_layers[0].conf_layer.weight.mul_(25)  # random weights: get some detections
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return net, lambda: _run(net, images, postprocess)


def _run(net, images, postprocess):
    out = {}
    with torch.no_grad():
        net.train()
        out.update({f'raw/{k}': v for k, v in net(images).items()})
        net.eval()
        dets = net(images)
    for b, det in enumerate(dets):
        assert det['detection'] is not None
        out.update({f'det{b}/{k}': v for k, v in det['detection'].items()})
        classes, scores, boxes, masks = postprocess(dets, 40, 30, batch_idx=b)
        out.update({f'post{b}/classes': classes, f'post{b}/scores': scores, f'post{b}/boxes': boxes,
                    f'post{b}/masks': masks})
    return out


def _assert_same(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key


def test_two_configs_in_one_process_give_what_each_gives_alone(monkeypatch):
    """Nothing in the network, the loss-free forward or postprocess reads or writes the global cfg:
    two models of different configs built side by side give what each gives when built alone."""
    from tests.eval_helpers import register, tiny_config
    a_name = register(monkeypatch, tiny_config('two_a', num_classes=7, prototypes=8))
    b_name = register(monkeypatch, tiny_config('two_b', num_classes=4, prototypes=5).copy({
        'max_size': 96, 'mask_proto_bias': True, 'nms_top_k': 50}))
    config_a = set_cfg(a_name).copy()
    config_b = set_cfg(b_name).copy()

    _, run_a = _outputs(config_a, 64)
    alone_a = run_a()
    _, run_b = _outputs(config_b, 96)
    alone_b = run_b()

    # Both built before either runs, the global set to a third config meanwhile.
    set_cfg('yolact_base_config')
    global_before = dict(vars(cfg))
    net_a, run_a = _outputs(config_a, 64)
    net_b, run_b = _outputs(config_b, 96)
    assert (net_a.mask_dim, net_b.mask_dim) == (8, 6)
    _assert_same(run_b(), alone_b)
    _assert_same(run_a(), alone_a)
    assert dict(vars(cfg)) == global_before  # nothing wrote the global
    assert config_a.mask_dim is None and config_b.mask_dim is None  # nor the configs
