import pytest

from data.config import (
    COCO_CLASSES,
    COCO_LABEL_MAP,
    ConfigError,
    cfg,
    coco2014_dataset,
    config_for,
    config_names,
    dataset_base,
    dataset_for,
    set_cfg,
    set_dataset,
    use_dataset,
    with_dataset,
    yolact_base_config,
)

ORIGINAL_CONFIGS = ['yolact_base_config', 'yolact_im400_config', 'yolact_im700_config',
                    'yolact_darknet53_config', 'yolact_resnet50_config',
                    'yolact_resnet50_pascal_config', 'yolact_plus_base_config',
                    'yolact_plus_resnet50_config']


pytestmark = pytest.mark.usefixtures('restore_cfg')


def test_every_original_config_is_registered():
    assert set(ORIGINAL_CONFIGS) <= set(config_names())


def test_set_cfg_replaces_global_in_place_and_names_pascal():
    import data.config
    same_object = data.config.cfg
    set_cfg('yolact_im400_config')
    assert same_object is cfg and cfg.max_size == 400 and cfg.name == 'yolact_im400'
    # im400 rescales the base anchors: int(24 / 550 * 400) == 17
    assert cfg.backbone.pred_scales[0] == [17]
    set_cfg('yolact_resnet50_pascal_config')
    assert cfg.name == 'yolact_resnet50_pascal' and cfg.num_classes == 21


def test_set_cfg_accepts_short_name():
    set_cfg('yolact_resnet50')
    assert cfg.name == 'yolact_resnet50' and cfg.backbone.name == 'ResNet50'


def test_unknown_config_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        set_cfg('yolact_huge_config')
    assert "yolact_huge_config" in str(err.value) and 'yolact_base_config' in str(err.value)


def test_set_cfg_never_evaluates_code():
    with pytest.raises(ConfigError):
        set_cfg("__import__('os').system('echo hacked')")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        set_dataset('coco2019_dataset')
    assert 'coco2017_dataset' in str(err.value)
    set_dataset('coco2014_dataset')
    assert cfg.dataset.name == 'COCO 2014'


def test_dataset_values_change_neither_the_registry_nor_the_global_cfg():
    dataset = dataset_for('coco2014')
    assert dataset.name == 'COCO 2014' and dataset is not coco2014_dataset
    dataset.name = 'changed'
    assert coco2014_dataset.name == 'COCO 2014'
    config = config_for('yolact_base')
    own = dataset_base.copy({'name': 'own', 'class_names': ('a', 'b'), 'label_map': {5: 1, 9: 2}})
    said = []
    swapped = with_dataset(config, own, source='own.json', say=said.append)
    assert swapped.dataset is own and swapped.num_classes == 3
    assert config.num_classes == 81 and config.dataset.name == 'COCO 2017' and cfg.num_classes == 81
    assert said == ["Classes from own.json: 2 classes (a, b), category ids 5, 9 -> labels 1..2; "
                    "num_classes 3 (the config had 81)."]
    use_dataset(own, source='own.json')  # the original's facade: the same, on the global cfg
    assert cfg.dataset is own and cfg.num_classes == 3


def test_unknown_option_fails_on_copy():
    with pytest.raises(ConfigError, match="max_szie"):
        yolact_base_config.copy({'max_szie': 400})


def test_dropped_option_fails_when_switched_on_but_accepted_when_off():
    with pytest.raises(ConfigError, match='use_yolo_regressors'):
        yolact_base_config.copy({'use_yolo_regressors': True})
    with pytest.raises(ConfigError, match='mask_proto_coeff_gate'):
        cfg.mask_proto_coeff_gate = True
    ok = yolact_base_config.copy({'use_yolo_regressors': False, 'mask_proto_grid_file': 'x.npy'})
    assert not hasattr(ok, 'use_yolo_regressors')


def test_copy_does_not_touch_the_source():
    small = yolact_base_config.copy({'max_size': 300})
    assert small.max_size == 300 and yolact_base_config.max_size == 550


def test_coco_label_map_is_the_original():
    assert len(COCO_CLASSES) == 80 and len(COCO_LABEL_MAP) == 80
    assert COCO_LABEL_MAP[1] == 1 and COCO_LABEL_MAP[13] == 12 and COCO_LABEL_MAP[90] == 80
    assert sorted(COCO_LABEL_MAP.values()) == list(range(1, 81))


def test_plus_config_settings():
    set_cfg('yolact_plus_base_config')
    assert cfg.use_maskiou and cfg.rescore_mask and cfg.discard_mask_area == 25
    assert cfg.backbone.args[1] == [0, 4, 23, 3] and cfg.backbone.args[2] == 3
    assert len(cfg.backbone.pred_scales[0]) == 3
    assert cfg.backbone.pred_scales[0][1] == pytest.approx(24 * 2 ** (1 / 3))


def test_demo_config_gives_every_synthetic_object_several_positive_anchors():
    """The demo learns from scratch in minutes only because each object trains several anchors:
    with one scale per level and IoU >= 0.5 (the original's scheme) most objects got one or two,
    many only their forced best match. Measured on the synthetic set at the demo's input size."""
    import numpy as np
    import torch

    from data.synthetic import render_image
    from layers.box_utils import jaccard, point_form
    from yolact import Yolact

    set_cfg('yolact_resnet18_synthetic_config')
    size = cfg.max_size
    net = Yolact(cfg).train()
    levels = [(-(-size // s), -(-size // s)) for s in (8, 16, 32, 64, 128)]  # P3..P7 grid sizes
    priors = point_form(net.priors(levels, torch.device('cpu')))
    boxes = []
    for index in range(1, 31):
        for inst in render_image(0, 'val', index, size).instances:
            if not inst.iscrowd:
                rows, cols = np.nonzero(inst.mask)
                boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    iou = jaccard(torch.tensor(boxes, dtype=torch.float32) / size, priors)
    positives = (iou >= cfg.positive_iou_threshold).sum(dim=1).float()
    assert len(boxes) > 100
    assert positives.mean() >= 5
    assert (positives == 0).float().mean() <= 0.05
