"""The speed paths give the plain path's fp32 results.

Covered: channels-last weights and activations, inference_mode, torch.compile of the network
(`Yolact.compile_network`), the vectorised Fast NMS (against a per-class loop, and its masked
variant for accelerators against the filtering one), the batched IoU, and the cropping and
thresholding of postprocess (against per-mask loops). Small config and inputs, so this stays fast.
"""
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from data.config import cfg, set_cfg
from layers import output_utils
from layers.box_utils import crop, jaccard, sanitize_coordinates
from layers.functions import Detect
from layers.output_utils import postprocess, upsample_binary_masks
from yolact import Yolact, prefers_channels_last

TOL = 1e-4
SIZE = 128


pytestmark = pytest.mark.usefixtures('restore_cfg')


def small_net(train: bool = False, blocks_per_stage: int = 2) -> Yolact:
    """The synthetic demo config (half-width ResNet-18, narrow FPN) at 128 px with seeded weights;
    `blocks_per_stage=1` makes its backbone a ResNet-10 (half the layers to compile).

    Its 7 classes put softmax scores near 1/7, above Detect's 0.05 threshold, so Detect has work.
    """
    set_cfg('yolact_resnet18_synthetic_config')
    cfg.max_size = SIZE
    cfg.freeze_bn = True
    # One anchor scale per level, as these tests were written for: with the demo's three, many
    # random-weight scores tie to 1e-7 and tied detections may come out in either order.
    layers, *rest = cfg.backbone.args
    cfg.backbone = cfg.backbone.copy({'pred_scales': [[16], [32], [64], [128], [256]],
                                      'args': ([blocks_per_stage] * len(layers), *rest)})
    torch.manual_seed(0)
    net = Yolact(cfg)
    net.init_weights(backbone_path=None)
    # Non-trivial batch-norm statistics, so folding/reordering BN would show.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
                module.weight.uniform_(0.5, 1.0, generator=gen)
                module.bias.uniform_(-0.1, 0.1, generator=gen)
    net.train(train)
    net.detect.use_fast_nms = True
    net.detect.use_cross_class_nms = False
    return net


def image(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


def assert_close_dicts(got: dict, want: dict, tol: float = TOL) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].shape == want[key].shape, key
        assert torch.allclose(got[key].float(), want[key].float(), atol=tol, rtol=0), \
            f"{key}: max diff {(got[key].float() - want[key].float()).abs().max().item()}"


def assert_same_detections(got: list, want: list, tol: float = TOL) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g, w = g['detection'], w['detection']
        assert (g is None) == (w is None)
        if w is None:
            continue
        assert torch.equal(g['class'], w['class'])
        assert g.keys() == w.keys()
        for key in ('box', 'score', 'mask', 'proto'):
            if key in w:
                assert torch.allclose(g[key], w[key], atol=tol, rtol=0), key


# ---------------------------------------------------------------- network paths

def test_channels_last_gives_the_same_raw_outputs_and_detections():
    net = small_net()
    x = image()
    with torch.no_grad():
        plain_raw = net.network(x)
        plain = net(x)
    assert plain[0]['detection'] is not None and plain[0]['detection']['score'].numel() > 10
    fast = net.to(memory_format=torch.channels_last)
    conv = fast.backbone.layers[0][0].conv1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_close_dicts(fast.network(x), plain_raw)
        assert_same_detections(fast(x), plain)


def test_channels_last_training_outputs_and_gradients_match():
    torch.manual_seed(0)
    net = small_net(train=True)
    x = image(2)
    out = net(x)
    loss = sum(v.float().square().mean() for k, v in out.items() if k != 'priors')
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)

    net = net.to(memory_format=torch.channels_last)
    out_cl = net(x)
    assert_close_dicts(out_cl, {k: v.detach() for k, v in out.items()})
    loss_cl = sum(v.float().square().mean() for k, v in out_cl.items() if k != 'priors')
    loss_cl.backward()
    for name, grad in grads.items():
        got = dict(net.named_parameters())[name].grad
        assert torch.allclose(got, grad, atol=TOL, rtol=1e-3), name


def test_inference_mode_equals_no_grad():
    net = small_net()
    x = image()
    with torch.no_grad():
        want = postprocess(net(x), SIZE, SIZE)
    with torch.inference_mode():
        got = postprocess(net(x), SIZE, SIZE)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_prefers_channels_last_is_a_plain_decision():
    assert isinstance(prefers_channels_last(torch.device('cpu'), False), bool)
    assert prefers_channels_last(torch.device('cpu'), True) is True
    assert prefers_channels_last(torch.device('cuda'), True) is True


def test_compiled_network_matches_eager():
    """Frozen inference compile: same outputs as eager, and the weights really frozen (folded and
    pre-packed into oneDNN convolutions, which a plain compile does not call)."""
    net = small_net(blocks_per_stage=1)  # Inductor's compile time grows with the layers
    x = image()
    with torch.no_grad():
        want_raw = net.network(x)
        want = net(x)
    net.compile_network()
    with torch.no_grad():
        got = net(x)  # compiles
    with torch.no_grad(), torch.profiler.profile() as prof:
        got_raw = net._compiled_network(x)
    assert_close_dicts(got_raw, want_raw)
    assert_same_detections(got, want)
    ops = {event.name for event in prof.events()}
    assert 'mkldnn::_convolution_pointwise' in ops and 'aten::convolution' not in ops
    # Compiling keeps the module's own weights and names.
    assert not any(k.startswith('_orig_mod') for k in net.state_dict())


def test_frozen_compile_uses_weights_loaded_later(tmp_path):
    """A frozen graph holds the weights it was traced with: after load_weights the network is
    compiled again and must not get the old graph back from torch.compile's cache. compile_network
    compiles whatever `network` is; one convolution keeps the two compiles short."""
    net = small_net(blocks_per_stage=1)
    conv = net.proto_net[0]
    net.network = lambda x: {'out': conv(x)}
    x = torch.randn(1, conv.in_channels, 8, 8)
    net.compile_network()
    with torch.no_grad():
        before = net._compiled_network(x)['out']
    changed = {k: v * 1.5 if k.endswith('.weight') else v for k, v in net.state_dict().items()}
    torch.save(changed, tmp_path / 'changed.pth')
    net.load_weights(str(tmp_path / 'changed.pth'))
    with torch.no_grad():
        want = conv(x)
        got = net._compiled_network(x)['out']
    assert not torch.allclose(want, before, atol=1e-3)
    assert torch.allclose(got, want, atol=1e-5)


def test_channels_last_training_step_gives_the_plain_losses_and_gradients():
    """The layout train.py uses on AVX512/AMX CPUs (utils.device.prefers_channels_last): through
    MultiBoxLoss, the fp32 loss terms and every gradient stay the default layout's."""
    from benchmarks.parity_fill import make_targets
    from train import NetLoss, build_criterion
    net = small_net(train=True)
    model = NetLoss(net, build_criterion(cfg))
    x = image(2)
    targets, masks, num_crowds = make_targets(SIZE, SIZE)
    for t in targets:
        t[:, 4] %= cfg.num_classes - 1  # parity_fill's COCO class indices, folded into the demo's
    results = []
    for channels_last in (False, True):
        if channels_last:
            net.to(memory_format=torch.channels_last)
        net.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        losses = model(x, list(targets), list(masks), list(num_crowds))
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        results.append(({k: v.detach() for k, v in losses.items()}, grads))
    (plain_losses, plain_grads), (losses, grads) = results
    assert set(plain_losses) >= {'B', 'C', 'M'}
    assert_close_dicts(losses, plain_losses)
    assert grads.keys() == plain_grads.keys() and len(grads) > 50
    for name, grad in plain_grads.items():
        assert torch.allclose(grads[name], grad, atol=TOL, rtol=0), \
            f"{name}: max diff {(grads[name] - grad).abs().max().item()}"


# ---------------------------------------------------------------- Detect

def plain_fast_nms(boxes, scores, iou_threshold, top_k, max_dets):
    """Fast NMS written as loops: per class, box j is dropped when a higher-ranked box of its
    class overlaps it by more than the threshold (suppressed boxes still suppress)."""
    found = []
    for c in range(scores.shape[0]):
        order = scores[c].argsort(descending=True)[:top_k]
        iou = box_iou(boxes[order], boxes[order])
        for j in range(order.numel()):
            if j == 0 or iou[:j, j].max() <= iou_threshold:
                found.append((scores[c, order[j]].item(), c, order[j].item()))
    found.sort(key=lambda t: -t[0])
    return found[:max_dets]


def random_predictions(num_priors=300, num_classes=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(num_priors, 2, generator=gen)
    sizes = 0.05 + 0.3 * torch.rand(num_priors, 2, generator=gen)
    return {'loc': 0.3 * torch.randn(1, num_priors, 4, generator=gen),
            'conf': torch.softmax(2 * torch.randn(1, num_priors, num_classes, generator=gen), dim=-1),
            'mask': torch.randn(1, num_priors, 4, generator=gen),
            'priors': torch.cat((centers, sizes), dim=1)}


@pytest.mark.parametrize('conf_thresh', [0.05, 0.5])
def test_vectorised_fast_nms_matches_a_per_class_loop(conf_thresh):
    from layers.box_utils import decode
    preds = random_predictions()
    det = Detect(6, 0, top_k=40, conf_thresh=conf_thresh, nms_thresh=0.3, max_num_detections=50)
    det.use_fast_nms = True
    got = det(preds)[0]['detection']

    boxes = decode(preds['loc'][0], preds['priors'])
    fg = preds['conf'][0, :, 1:]
    candidate = fg.max(dim=1).values > conf_thresh
    idx = torch.nonzero(candidate).squeeze(1)
    want = plain_fast_nms(boxes[idx], fg[idx].t(), 0.3, 40, 50)
    assert 0 < len(want) <= 50
    assert got['class'].tolist() == [c for _, c, _ in want]
    assert torch.allclose(got['score'], torch.tensor([s for s, _, _ in want]), atol=0, rtol=0)
    assert torch.equal(got['box'], boxes[idx[[i for _, _, i in want]]])


@pytest.mark.parametrize('conf_thresh', [0.05, 0.6, 1.0])
def test_masked_fast_nms_equals_filtered(conf_thresh):
    preds = random_predictions(num_priors=500, seed=3)
    preds = {k: torch.cat([v, v.flip(1)]) if k != 'priors' else v for k, v in preds.items()}  # batch 2
    results = []
    for filter_candidates in (True, False):
        det = Detect(6, 0, top_k=100, conf_thresh=conf_thresh, nms_thresh=0.5, max_num_detections=80)
        det.use_fast_nms = True
        det.filter_candidates = filter_candidates
        results.append(det(preds))
    assert_same_detections(results[1], results[0], tol=0)
    if conf_thresh == 1.0:
        assert all(r['detection'] is None for r in results[0])


def test_batched_jaccard_equals_torchvision_bit_for_bit_and_is_symmetric():
    gen = torch.Generator().manual_seed(4)
    xy = torch.rand(3, 50, 2, generator=gen)
    boxes = torch.cat((xy, xy + 0.3 * torch.rand(3, 50, 2, generator=gen)), dim=2)
    other = boxes.flip(1)
    got = jaccard(boxes, other)
    for i in range(3):
        assert torch.equal(got[i], box_iou(boxes[i], other[i]))
    same = jaccard(boxes, boxes)
    assert torch.equal(same, same.transpose(1, 2))
    crowd = jaccard(boxes[0], other[0], iscrowd=True)
    inter = box_iou(boxes[0], other[0])  # only for shape
    assert crowd.shape == inter.shape


# ---------------------------------------------------------------- postprocess

def test_crop_equals_per_mask_slicing():
    gen = torch.Generator().manual_seed(5)
    masks = torch.rand(20, 24, 7, generator=gen)
    xy = torch.rand(7, 2, generator=gen) * 0.8
    boxes = torch.cat((xy, xy + 0.05 + 0.3 * torch.rand(7, 2, generator=gen)), dim=1)
    got = crop(masks, boxes)
    x1, x2 = sanitize_coordinates(boxes[:, 0], boxes[:, 2], 24, 1, cast=False)
    y1, y2 = sanitize_coordinates(boxes[:, 1], boxes[:, 3], 20, 1, cast=False)
    want = torch.zeros_like(masks)
    for n in range(7):
        for yy in range(20):
            for xx in range(24):
                if x1[n] <= xx < x2[n] and y1[n] <= yy < y2[n]:
                    want[yy, xx, n] = masks[yy, xx, n]
    assert torch.equal(got, want)


def test_postprocess_equals_per_mask_upsampling():
    net = small_net()
    with torch.no_grad():
        dets = net(image())
    det = dets[0]['detection']
    classes, scores, boxes, masks = postprocess(dets, 90, 70)
    assert masks.shape == (det['score'].numel(), 70, 90) and masks.is_contiguous()
    soft = cfg.mask_proto_mask_activation(det['proto'] @ det['mask'].t())
    soft = crop(soft, det['box'])
    for n in range(det['score'].numel()):
        one = F.interpolate(soft[None, None, :, :, n], (70, 90), mode='bilinear', align_corners=False)[0, 0]
        assert torch.equal(masks[n], (one > 0.5).float())
    assert torch.equal(classes, det['class']) and torch.equal(scores, det['score'])


@pytest.mark.parametrize('size', [(70, 90), (550, 550), (25, 30)])
def test_windowed_mask_upsampling_equals_full_interpolation(size, monkeypatch):
    """Cropped masks are upsampled window by window: bit for bit F.interpolate then > 0.5, for
    enlarging and shrinking, masks at the border, a one-pixel box and an all-zero mask."""
    h, w = size
    gen = torch.Generator().manual_seed(3)
    soft = torch.rand(34, 40, 9, generator=gen)
    xy = torch.rand(9, 2, generator=gen) * 0.7
    boxes = torch.cat((xy, xy + 0.02 + 0.25 * torch.rand(9, 2, generator=gen)), dim=1)
    boxes[0] = torch.tensor([0.0, 0.0, 0.2, 0.3])   # top-left border
    boxes[1] = torch.tensor([0.8, 0.7, 1.0, 1.0])   # bottom-right border
    boxes[2] = torch.tensor([0.5, 0.5, 0.5, 0.5])   # one source pixel (crop pads by 1)
    masks = crop(soft, boxes).permute(2, 0, 1).contiguous()
    masks[3] = 0
    want = (F.interpolate(masks[None], (h, w), mode='bilinear', align_corners=False)[0] > 0.5).float()
    monkeypatch.setattr(output_utils, 'F', None)  # the window path must not need F.interpolate
    got = upsample_binary_masks(masks, h, w)
    assert got.dtype == torch.float32 and got.shape == (9, h, w)
    assert torch.equal(got, want)
    assert got[3].sum() == 0 and got[0].sum() > 0


def test_mask_upsampling_of_uncropped_masks_interpolates_everything():
    masks = torch.rand(4, 20, 30, generator=torch.Generator().manual_seed(4))
    want = (F.interpolate(masks[None], (50, 60), mode='bilinear', align_corners=False)[0] > 0.5).float()
    assert torch.equal(upsample_binary_masks(masks, 50, 60), want)
    nearest = (F.interpolate(masks[None], (50, 60), mode='nearest')[0] > 0.5).float()
    assert torch.equal(upsample_binary_masks(masks, 50, 60, mode='nearest'), nearest)


def test_folded_frozen_batchnorm_matches_the_plain_path(monkeypatch):
    import backbone
    torch.manual_seed(0)
    net = small_net(train=True)  # freeze_bn: BatchNorm in eval mode, as train.py for small batches
    x = image(2)
    results = []
    for fold in (False, True):
        monkeypatch.setattr(backbone, 'FOLD_FROZEN_BN', fold)
        net.zero_grad(set_to_none=True)
        out = net(x)
        loss = sum(v.float().square().mean() for k, v in out.items() if k != 'priors')
        loss.backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        results.append(({k: v.detach() for k, v in out.items()}, grads))
    (plain_out, plain_grads), (fold_out, fold_grads) = results
    assert_close_dicts(fold_out, plain_out)
    assert fold_grads.keys() == plain_grads.keys()
    assert any(k.startswith('backbone.') for k in fold_grads)
    for name, grad in plain_grads.items():
        assert torch.allclose(fold_grads[name], grad, atol=TOL, rtol=1e-3), name


def test_batchnorm_in_training_mode_is_not_folded(monkeypatch):
    set_cfg('yolact_resnet18_synthetic_config')
    cfg.max_size = SIZE
    cfg.freeze_bn = False
    net = Yolact(cfg).train()
    bn = net.backbone.bn1
    before = bn.running_mean.clone()
    net(image(2))
    # Batch statistics were used and the running statistics updated: BatchNorm really ran.
    assert not torch.equal(bn.running_mean, before)


def test_autocast_inference_weight_cache_is_exact_and_follows_weight_changes(monkeypatch):
    import backbone
    net = small_net()
    x = image()

    def run():
        with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
            return {k: v.float() for k, v in net.network(x).items()}

    first, again = run(), run()
    conv = net.backbone.layers[0][0].conv1
    assert conv._low_precision_folded[1].dtype == torch.bfloat16
    monkeypatch.setattr(backbone, '_low_precision_inference_params', lambda *args: None)
    uncached = run()
    monkeypatch.undo()
    assert_close_dicts(first, uncached, tol=0)
    assert_close_dicts(again, uncached, tol=0)

    # New weights loaded in place must be used, not the cached copy.
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state['backbone.layers.0.0.bn1.running_mean'] += 0.5
    state['backbone.layers.0.0.conv1.weight'] *= 1.5
    net.load_state_dict(state)
    changed = run()
    monkeypatch.setattr(backbone, '_low_precision_inference_params', lambda *args: None)
    assert_close_dicts(changed, run(), tol=0)
    assert not torch.equal(changed['proto'], first['proto'])
    # With grad (training) nothing is cached or reused.
    monkeypatch.undo()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert backbone._low_precision_inference_params(conv, net.backbone.layers[0][0].bn1, 'cpu') is None
