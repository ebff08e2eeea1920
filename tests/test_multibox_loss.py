"""MultiBoxLoss against numbers produced by the original implementation (see
tests/data/loss_reference.md), plus behavioural checks."""
import copy
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from data.config import activation_func, cfg, mask_type, set_cfg
from layers.box_utils import match
from layers.modules import MultiBoxLoss

REF_PATH = Path(__file__).parent / 'data' / 'loss_reference.pt'
NUM_CLASSES = 5


@pytest.fixture(scope='module')
def ref():
    return torch.load(REF_PATH, weights_only=True)


@pytest.fixture(autouse=True)
def restore_cfg():
    saved = cfg.copy()
    yield
    cfg.replace(saved)


@pytest.fixture(scope='module')
def net(ref):
    maskiou_net = nn.Sequential(nn.Conv2d(1, NUM_CLASSES - 1, 3, stride=2), nn.ReLU(),
                                nn.AdaptiveMaxPool2d(1), nn.Flatten())
    maskiou_net.load_state_dict(ref['inputs']['maskiou_net'])
    return types.SimpleNamespace(maskiou_net=maskiou_net)


def build_loss(options):
    """Set the scenario's cfg fields on top of yolact_base and build the loss."""
    set_cfg('yolact_base_config')
    opts = {k: v for k, v in options.items() if k != 'seed'}
    for key, val in opts.items():
        setattr(cfg, key, getattr(activation_func, val) if key == 'mask_proto_mask_activation' else val)
    return MultiBoxLoss(NUM_CLASSES, opts['positive_iou_threshold'], opts['negative_iou_threshold'],
                        opts['ohem_negpos_ratio'], config=cfg)


def fresh_predictions(ref, dtype=torch.float32):
    return {k: v.to(dtype).clone().requires_grad_(k != 'priors')
            for k, v in ref['inputs']['predictions'].items()}


def run(crit, net, ref, preds=None, targets=None, masks=None, num_crowds=None, seed=None):
    inp = ref['inputs']
    if seed is not None:
        torch.manual_seed(seed)
    return crit(net, fresh_predictions(ref) if preds is None else preds,
                inp['targets'] if targets is None else targets,
                inp['masks'] if masks is None else masks,
                inp['num_crowds'] if num_crowds is None else num_crowds)


SCENARIOS = ['base', 'plus', 'focal_softmax', 'focal_sigmoid', 'focal_objectness', 'objectness',
             'extras_l1', 'extras_disj', 'subsample']


@pytest.mark.parametrize('name', SCENARIOS)
def test_matches_original(ref, net, name):
    scenario = ref['scenarios'][name]
    crit = build_loss(scenario['options'])
    out = run(crit, net, ref, seed=scenario['options']['seed'])
    assert list(out) == list(scenario['losses'])
    for key, expected in scenario['losses'].items():
        torch.testing.assert_close(out[key].detach(), expected, rtol=1e-4, atol=1e-4, msg=key)


def test_gradients_match_original(ref, net):
    scenario = ref['scenarios']['plus']
    crit = build_loss(scenario['options'])
    preds = fresh_predictions(ref)
    out = run(crit, net, ref, preds=preds)
    keys = list(scenario['grads'])
    grads = torch.autograd.grad(sum(out.values()), [preds[k] for k in keys])
    for key, grad in zip(keys, grads):
        torch.testing.assert_close(grad, scenario['grads'][key], rtol=1e-4, atol=1e-6, msg=key)


def test_inputs_are_not_modified(ref, net):
    crit = build_loss(ref['scenarios']['extras_l1']['options'])
    preds = fresh_predictions(ref)
    targets = [t.clone() for t in ref['inputs']['targets']]
    masks = [m.clone() for m in ref['inputs']['masks']]
    num_crowds = list(ref['inputs']['num_crowds'])
    before = (copy.deepcopy({k: v.detach() for k, v in preds.items()}), copy.deepcopy(targets),
              copy.deepcopy(masks), list(num_crowds))
    mask_ids = [id(m) for m in masks]
    assert num_crowds[0] > 0  # the crowd path is exercised

    run(crit, net, ref, preds=preds, targets=targets, masks=masks, num_crowds=num_crowds)

    for k, v in preds.items():
        assert torch.equal(v.detach(), before[0][k]), k
    assert all(torch.equal(a, b) for a, b in zip(targets, before[1]))
    assert [id(m) for m in masks] == mask_ids
    assert all(torch.equal(a, b) and a.shape == b.shape for a, b in zip(masks, before[2]))
    assert num_crowds == before[3]


def test_neutral_anchors_do_not_affect_conf_loss(ref, net):
    """Anchors with conf_t == -1 (between the IoU thresholds or under a crowd) must be ignored."""
    options = ref['scenarios']['base']['options']
    crit = build_loss(options)
    inp = ref['inputs']
    priors = inp['predictions']['priors']
    neutral = torch.zeros(2, priors.size(0), dtype=torch.bool)
    for b, (t, n) in enumerate(zip(inp['targets'], inp['num_crowds'])):
        g = t.size(0) - n
        crowd = t[g:, :4] if n else None
        _, conf_t, _ = match(options['positive_iou_threshold'], options['negative_iou_threshold'],
                             t[:g, :4], priors, t[:g, 4].long(), crowd, options['crowd_iou_threshold'])
        neutral[b] = conf_t < 0
    assert neutral.sum() > 5

    base = run(crit, net, ref)['C']
    preds = fresh_predictions(ref)
    with torch.no_grad():
        preds['conf'][neutral] = torch.randn(int(neutral.sum()), NUM_CLASSES) * 10
    assert torch.allclose(run(crit, net, ref, preds=preds)['C'], base)


def test_box_loss_is_zero_at_the_targets(ref, net):
    options = ref['scenarios']['base']['options']
    crit = build_loss(options)
    inp = ref['inputs']
    preds = fresh_predictions(ref)
    with torch.no_grad():
        for b, (t, n) in enumerate(zip(inp['targets'], inp['num_crowds'])):
            g = t.size(0) - n
            loc_t, _, _ = match(0.5, 0.4, t[:g, :4], preds['priors'], t[:g, 4].long())
            preds['loc'][b] = loc_t
    assert run(crit, net, ref)['B'] > 1
    assert run(crit, net, ref, preds=preds)['B'].abs() < 1e-5


def test_loss_decreases_when_predictions_move_toward_targets(ref, net):
    crit = build_loss(ref['scenarios']['plus']['options'])
    preds = fresh_predictions(ref)
    leaves = [preds[k] for k in ('loc', 'conf', 'mask', 'proto', 'segm')]
    first = None
    for _ in range(15):
        out = run(crit, net, ref, preds=preds)
        if first is None:
            first = {k: float(v.detach()) for k, v in out.items()}
        grads = torch.autograd.grad(sum(out.values()), leaves)
        with torch.no_grad():  # sign-gradient steps: scale-free, no optimizer state
            for leaf, grad in zip(leaves, grads):
                leaf -= 0.05 * grad.sign()
    last = {k: float(v.detach()) for k, v in run(crit, net, ref, preds=preds).items()}
    for key in ('B', 'C', 'M', 'S'):  # 'I' also depends on the (here frozen) mask-IoU head
        assert last[key] < 0.8 * first[key], (key, first[key], last[key])
    assert sum(last.values()) < sum(first.values())


def _single(ref, idx):
    inp = ref['inputs']
    preds = {k: (v if k == 'priors' else v[idx:idx + 1]).clone().requires_grad_(k != 'priors')
             for k, v in inp['predictions'].items()}
    return preds, [inp['targets'][idx]], [inp['masks'][idx]], [inp['num_crowds'][idx]]


def test_image_with_only_crowds(ref, net):
    """An image whose annotations are all crowds has no positives. It adds nothing to the
    anchor-based terms (no positives means no mined negatives) but still trains 'S'."""
    crit = build_loss(ref['scenarios']['plus']['options'])
    inp = ref['inputs']
    preds1, targets1, masks1, crowds1 = _single(ref, 0)
    alone = crit(net, preds1, targets1, masks1, crowds1)

    crowd_only_target = inp['targets'][0][-1:].clone()
    crowd_only_mask = inp['masks'][0][-1:].clone()
    preds2 = fresh_predictions(ref)
    both = crit(net, preds2, [inp['targets'][0], crowd_only_target], [inp['masks'][0], crowd_only_mask],
                [1, 1])
    for key in ('B', 'C', 'M', 'I'):
        torch.testing.assert_close(both[key], alone[key], rtol=1e-5, atol=1e-6, msg=key)
    assert torch.isfinite(both['S']) and both['S'] > 0
    assert not torch.allclose(both['S'], alone['S'])

    # A whole batch without non-crowd objects stays finite (the original divides by zero).
    nothing = crit(net, _single(ref, 1)[0], [crowd_only_target], [crowd_only_mask], [1])
    assert set(nothing) == {'B', 'M', 'C', 'S'}
    assert all(torch.isfinite(v) for v in nothing.values())
    assert all(float(nothing[k].detach()) == 0 for k in ('B', 'M', 'C'))


def test_float64_and_uint8_masks(ref, net):
    crit = build_loss(ref['scenarios']['base']['options'])
    expected = ref['scenarios']['base']['losses']
    out = run(crit, net, ref, preds=fresh_predictions(ref, torch.float64),
              masks=[m.bool() for m in ref['inputs']['masks']])
    for key, val in out.items():
        assert val.dtype == torch.float64
        torch.testing.assert_close(val.float(), expected[key], rtol=1e-4, atol=1e-4, msg=key)


def test_rejects_unsupported_config():
    set_cfg('yolact_base_config')
    cfg.mask_type = mask_type.direct
    with pytest.raises(ValueError, match='lincomb'):
        MultiBoxLoss(NUM_CLASSES, 0.5, 0.4, 3, config=cfg)
    cfg.mask_type = mask_type.lincomb
    cfg.mask_proto_loss = 'l2'
    with pytest.raises(ValueError, match='mask_proto_loss'):
        MultiBoxLoss(NUM_CLASSES, 0.5, 0.4, 3, config=cfg)


def test_rejects_mismatched_batch(ref, net):
    crit = build_loss(ref['scenarios']['base']['options'])
    with pytest.raises(ValueError, match='expected 2'):
        run(crit, net, ref, num_crowds=[0])
