"""The original's API, as its scripts use it: the active config is the default everywhere a config
can be passed, and each network, transform and loss keeps its own copy of the config."""
import numpy as np
import pytest
import torch

from data.coco import COCODetection
from data.config import MEANS, STD, cfg, config_for, set_cfg
from layers import output_utils
from layers.functions.detection import Detect
from layers.modules.multibox_loss import MultiBoxLoss
from layers.output_utils import postprocess
from utils.augmentations import BaseTransform, FastBaseTransform, SSDAugmentation
from yolact import Yolact

pytestmark = pytest.mark.usefixtures('restore_cfg')

DEMO = 'yolact_resnet18_synthetic_config'


@pytest.fixture(scope='module')
def demo_checkpoint(tmp_path_factory):
    """Random weights of the demo config, saved as train.py names them."""
    torch.manual_seed(0)
    net = Yolact(config_for(DEMO))
    net.init_weights(None)
    path = tmp_path_factory.mktemp('weights') / 'yolact_resnet18_synthetic_0_0.pth'
    net.save_weights(str(path))
    return str(path)


@pytest.fixture(scope='module')
def frame():
    """A BGR uint8 picture, not square, so that w and h cannot be swapped unnoticed."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    img[20:70, 30:90] = (40, 200, 90)
    return img


def run_original_eval(path, frame):
    """The set-up and per-image steps of the original eval.py (evalimage), word for word."""
    set_cfg(DEMO)
    net = Yolact()
    net.load_weights(path)
    net.eval()
    net.detect.use_fast_nms = True
    net.detect.use_cross_class_nms = False
    with torch.no_grad():
        batch = FastBaseTransform()(torch.from_numpy(frame).float()[None])
        preds = net(batch)
        h, w = frame.shape[:2]
        return postprocess(preds, w, h, visualize_lincomb=False, crop_masks=True, score_threshold=0)


def run_explicit(path, frame, config):
    net = Yolact(config)
    net.load_weights(path)
    net.eval()
    net.detect.use_fast_nms = True
    with torch.no_grad():
        preds = net(FastBaseTransform(config)(torch.from_numpy(frame).float()[None]))
        h, w = frame.shape[:2]
        return postprocess(preds, w, h, config=config)


def assert_same(got, want):
    assert len(got[1]) > 0  # random weights still give candidates above the 0.05 threshold
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_original_eval_sequence_matches_explicit_config(demo_checkpoint, frame):
    original = run_original_eval(demo_checkpoint, frame)
    set_cfg('yolact_base_config')  # the explicit path must not depend on the global
    explicit = run_explicit(demo_checkpoint, frame, config_for(DEMO))
    assert_same(original, explicit)
    assert original[3].shape == (len(original[1]), 90, 130)


def test_network_keeps_its_config_through_a_later_set_cfg(demo_checkpoint, frame):
    net_a = Yolact(set_cfg(DEMO))
    net_a.load_weights(demo_checkpoint)
    net_a.eval()
    net_a.detect.use_fast_nms = True
    transform_a = FastBaseTransform()
    x = torch.from_numpy(frame).float()[None]

    def run():
        with torch.no_grad():
            return postprocess(net_a(transform_a(x)), 130, 90)

    before = run()
    set_cfg('yolact_base_config')
    cfg.eval_mask_branch = False  # a write to the global after the net was built
    assert net_a.config is not cfg and net_a.config.max_size == 160 and net_a.config.eval_mask_branch
    assert transform_a(x).shape[-1] == 160
    assert_same(run(), before)
    # A second config beside it, without copies by hand.
    net_b = Yolact(set_cfg('yolact_im400_config'))
    assert net_b.config.max_size == 400 and net_a.config.max_size == 160


def test_config_passed_in_is_copied():
    config = config_for(DEMO)
    net = Yolact(config)
    config.backbone.transform.normalize = False  # a nested setting, shared by a shallow copy
    config.nms_thresh = 0.1
    assert net.config.backbone.transform.normalize and net.config.nms_thresh == 0.5
    assert config_for(DEMO).backbone.transform.normalize  # the registry is untouched too


def test_transforms_default_to_the_active_config():
    set_cfg(DEMO)
    img = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    want = BaseTransform(config_for(DEMO), MEANS, STD)(img)[0]
    for transform in (BaseTransform(), BaseTransform(MEANS), BaseTransform(MEANS, STD)):
        got = transform(img)[0]
        assert got.shape == (160, 160, 3) and np.array_equal(got, want)


def test_loss_and_detect_default_to_the_active_config():
    set_cfg(DEMO)
    original = MultiBoxLoss(cfg.num_classes, cfg.positive_iou_threshold, cfg.negative_iou_threshold,
                            cfg.ohem_negpos_ratio)
    explicit = MultiBoxLoss(cfg.num_classes, cfg.positive_iou_threshold, cfg.negative_iou_threshold,
                            cfg.ohem_negpos_ratio, config=config_for(DEMO))
    assert original.opts == explicit.opts
    detect = Detect(cfg.num_classes, 0, cfg.nms_top_k, cfg.nms_conf_thresh, cfg.nms_thresh)
    set_cfg('yolact_base_config')
    assert (detect.max_size, detect.max_num_detections) == (160, 100)
    assert Detect(81, 0, 200, 0.05, 0.5).max_size == 550


def test_datasets_as_the_original_train_py_builds_them(synthetic_paths):
    set_cfg(DEMO)
    original = COCODetection(image_path=synthetic_paths.valid_images, info_file=synthetic_paths.valid_info,
                             transform=BaseTransform(MEANS))
    train = COCODetection(image_path=synthetic_paths.train_images, info_file=synthetic_paths.train_info,
                          transform=SSDAugmentation(MEANS))
    set_cfg('yolact_base_config')
    config = config_for(DEMO)
    explicit = COCODetection(synthetic_paths.valid_images, synthetic_paths.valid_info,
                             transform=BaseTransform(config), config=config)
    got, want = original.pull_item(0), explicit.pull_item(0)
    assert got[0].shape == (3, 160, 160) and torch.equal(got[0], want[0])
    assert np.array_equal(got[1], want[1]) and original.num_classes == 7
    assert train[0][0].shape == (3, 160, 160)  # still the demo's size after set_cfg


def test_visualize_lincomb_shows_the_prototypes(demo_checkpoint, frame, monkeypatch):
    shown = []
    monkeypatch.setattr(output_utils.cv2, 'imshow', lambda title, image: shown.append((title, image)))
    set_cfg(DEMO)
    net = Yolact()
    net.load_weights(demo_checkpoint)
    net.eval()
    with torch.no_grad():
        preds = net(FastBaseTransform()(torch.from_numpy(frame).float()[None]))
    postprocess(preds, 130, 90, visualize_lincomb=True)
    proto = preds[0]['detection']['proto']
    assert len(shown) == 1 and np.array_equal(shown[0][1], output_utils.prototype_mosaic(proto))
