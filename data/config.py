"""Configurations of YOLACT: datasets, backbones, FPN and the model configs of the original.

The names (``cfg``, ``set_cfg``, ``set_dataset``, ``yolact_base_config`` ...) and every field name
are the original repository's, so user scripts and published checkpoints keep working.
``cfg`` is one global object that ``set_cfg`` overwrites in place and returns; the scripts pass it
down, and library modules (Yolact, the loss, the datasets, the transforms) take the config as an
argument and keep a copy of their own (`own_config`), so a later ``set_cfg`` changes none of them.
The original's calls without a config (``Yolact()``, ``FastBaseTransform()``, ...) copy the active
``cfg`` there, and only there.

Unlike the original, a config is never created by ``eval``: ``set_cfg``/``set_dataset`` look names
up in a registry, and a config that sets an option this port does not know fails loudly.
"""
import copy
from math import sqrt
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F

from backbone import BasicBlock, DarkNetBackbone, ResNetBackbone, VGGBackbone

# Colours for drawing detections, RGB.
COLORS = ((244, 67, 54), (233, 30, 99), (156, 39, 176), (103, 58, 183), (63, 81, 181),
          (33, 150, 243), (3, 169, 244), (0, 188, 212), (0, 150, 136), (76, 175, 80),
          (139, 195, 74), (205, 220, 57), (255, 235, 59), (255, 193, 7), (255, 152, 0),
          (255, 87, 34), (121, 85, 72), (158, 158, 158), (96, 125, 139))

# ImageNet statistics in BGR order (images are read with OpenCV).
MEANS = (103.94, 116.78, 123.68)
STD = (57.38, 57.12, 58.40)

COCO_CLASSES = ('person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus',
                'train', 'truck', 'boat', 'traffic light', 'fire hydrant',
                'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
                'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe',
                'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
                'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat',
                'baseball glove', 'skateboard', 'surfboard', 'tennis racket',
                'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl',
                'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot',
                'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
                'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop',
                'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven',
                'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase',
                'scissors', 'teddy bear', 'hair drier', 'toothbrush')

# COCO category ids skip numbers; this maps them to 1..80 (index in COCO_CLASSES + 1).
_COCO_CATEGORY_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                      22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42,
                      43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
                      62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
                      85, 86, 87, 88, 89, 90)
COCO_LABEL_MAP = {cat_id: idx + 1 for idx, cat_id in enumerate(_COCO_CATEGORY_IDS)}

PASCAL_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle",
                  "bus", "car", "cat", "chair", "cow", "diningtable",
                  "dog", "horse", "motorbike", "person", "pottedplant",
                  "sheep", "sofa", "train", "tvmonitor")

# The embedded default dataset made by `python -m data.synthetic` (category ids 1..6 in this order).
SYNTHETIC_CLASSES = ('circle', 'triangle', 'square', 'star', 'hexagon', 'cross')


class ConfigError(ValueError):
    """A config sets an option that does not exist, or names a config that does not exist."""


_ANY = object()  # marks a dropped option whose value never mattered on its own

# Research switches of the original that no shipped config turns on. This port does not implement
# them; a config may still carry them at their "off" value (old user configs do), anything else fails.
DROPPED_OPTIONS: Dict[str, Any] = {
    'mask_size': _ANY, 'use_gt_bboxes': False, 'train_masks': True, 'train_boxes': True,
    'mask_proto_normalize_mask_loss_by_sqrt_area': False, 'mask_proto_reweight_mask_loss': False,
    'mask_proto_reweight_coeff': 1, 'mask_proto_grid_file': _ANY, 'mask_proto_use_grid': False,
    'mask_proto_coeff_gate': False, 'mask_proto_prototypes_as_features': False,
    'mask_proto_prototypes_as_features_no_grad': False, 'mask_proto_remove_empty_masks': False,
    'mask_proto_double_loss': False, 'mask_proto_double_loss_alpha': _ANY,
    'mask_proto_split_prototypes_by_head': False, 'mask_proto_crop_with_pred_box': False,
    'use_class_balanced_conf': False, 'ohem_use_most_confident': False,
    'use_mask_scoring': False, 'mask_scoring_alpha': _ANY, 'use_change_matching': False,
    'use_coeff_nms': False, 'use_instance_coeff': False, 'num_instance_coeffs': _ANY,
    'use_prediction_module': False, 'use_yolo_regressors': False, 'use_prediction_matching': False,
    'delayed_settings': [], 'force_cpu_nms': _ANY, 'no_jit': _ANY,
}


def _check_dropped(key: str, value: Any) -> bool:
    """True when `key` is a dropped option set harmlessly; raises when it is switched on."""
    if key not in DROPPED_OPTIONS:
        return False
    off = DROPPED_OPTIONS[key]
    if off is not _ANY and value != off:
        raise ConfigError(f"config option '{key}' = {value!r} is a research switch of the original "
                          f"YOLACT that this port does not implement (only {off!r} is accepted)")
    return True


class Config:
    """A bag of named settings: ``cfg.max_size`` instead of ``cfg['max_size']``.

    ``copy(overrides)`` and ``replace(other)`` only accept keys the config already has, so a typo or
    an option this port dropped fails instead of being silently ignored.
    """

    def __init__(self, config_dict: Dict[str, Any]):
        for key, val in config_dict.items():
            if not _check_dropped(key, val):
                object.__setattr__(self, key, val)

    def __setattr__(self, key: str, val: Any) -> None:
        if not _check_dropped(key, val):
            object.__setattr__(self, key, val)

    def _checked_items(self, new_config_dict: Dict[str, Any]):
        for key, val in new_config_dict.items():
            if _check_dropped(key, val):
                continue
            if not hasattr(self, key) and not key.startswith('_'):
                raise ConfigError(f"unknown config option '{key}' (known: {', '.join(sorted(vars(self)))})")
            yield key, val

    def copy(self, new_config_dict: Optional[Dict[str, Any]] = None) -> 'Config':
        """A new Config with this one's settings, changed by `new_config_dict`."""
        ret = Config(vars(self))
        for key, val in ret._checked_items(new_config_dict or {}):
            setattr(ret, key, val)
        return ret

    def replace(self, new_config_dict) -> None:
        """Overwrite settings in place (`new_config_dict` may be a dict or a Config)."""
        if isinstance(new_config_dict, Config):
            new_config_dict = vars(new_config_dict)
        for key, val in new_config_dict.items():
            if not _check_dropped(key, val):
                setattr(self, key, val)

    def print(self) -> None:
        for key, val in vars(self).items():
            print(key, ' = ', val)

    def __repr__(self) -> str:
        return f"Config(name={getattr(self, 'name', None)!r})"


# ----------------------- DATASETS ----------------------- #

dataset_base = Config({
    'name': 'Base Dataset',
    'train_images': './data/coco/images/',
    'train_info': 'path_to_annotation_file',
    'valid_images': './data/coco/images/',
    'valid_info': 'path_to_annotation_file',
    # Without ground truth (test-dev) eval.py can only write detections, not score them.
    'has_gt': True,
    'class_names': COCO_CLASSES,
    # category_id -> index in class_names + 1. None: ids are already 1..N.
    'label_map': None,
})

coco2014_dataset = dataset_base.copy({
    'name': 'COCO 2014',
    'train_info': './data/coco/annotations/instances_train2014.json',
    'valid_info': './data/coco/annotations/instances_val2014.json',
    'label_map': COCO_LABEL_MAP,
})

# COCO 2017 as data/scripts/COCO.sh and COCO_test.sh unpack it (the original kept all images in
# one images/ folder; its file names are unique, so train2017 and val2017 may link to that).
coco2017_dataset = dataset_base.copy({
    'name': 'COCO 2017',
    'train_images': './data/coco/train2017/',
    'valid_images': './data/coco/val2017/',
    'train_info': './data/coco/annotations/instances_train2017.json',
    'valid_info': './data/coco/annotations/instances_val2017.json',
    'label_map': COCO_LABEL_MAP,
})

coco2017_testdev_dataset = dataset_base.copy({
    'name': 'COCO 2017 Test-Dev',
    'valid_images': './data/coco/test2017/',
    'valid_info': './data/coco/annotations/image_info_test-dev2017.json',
    'has_gt': False,
    'label_map': COCO_LABEL_MAP,
})

pascal_sbd_dataset = dataset_base.copy({
    'name': 'Pascal SBD 2012',
    'train_images': './data/sbd/img',
    'valid_images': './data/sbd/img',
    'train_info': './data/sbd/pascal_sbd_train.json',
    'valid_info': './data/sbd/pascal_sbd_val.json',
    'class_names': PASCAL_CLASSES,
})

synthetic_dataset = dataset_base.copy({
    'name': 'Synthetic shapes',
    'train_images': './data/synthetic/train/',
    'train_info': './data/synthetic/instances_train.json',
    'valid_images': './data/synthetic/val/',
    'valid_info': './data/synthetic/instances_val.json',
    'class_names': SYNTHETIC_CLASSES,
})


# ----------------------- TRANSFORMS ----------------------- #
# How a backbone expects its input: channel order and normalisation of 0..255 pixels.

resnet_transform = Config({
    'channel_order': 'RGB',
    'normalize': True,
    'subtract_means': False,
    'to_float': False,
})

vgg_transform = Config({
    # vgg_reducedfc.pth was trained on RGB input although VGG is usually BGR.
    'channel_order': 'RGB',
    'normalize': False,
    'subtract_means': True,
    'to_float': False,
})

darknet_transform = Config({
    'channel_order': 'RGB',
    'normalize': False,
    'subtract_means': False,
    'to_float': True,
})


# ----------------------- BACKBONES ----------------------- #

backbone_base = Config({
    'name': 'Base Backbone',
    'path': 'path/to/pretrained/weights',
    'type': object,
    'args': tuple(),
    'transform': resnet_transform,
    'selected_layers': list(),
    'pred_scales': list(),
    'pred_aspect_ratios': list(),
    # Prior sizes in pixels of a max_size image (True) or relative to the layer's grid (False).
    'use_pixel_scales': False,
    # Aspect ratios are given already square-rooted.
    'preapply_sqrt': True,
    # The published yolact_base checkpoints were trained with h = w for every prior (a bug the
    # original keeps for compatibility).
    'use_square_anchors': False,
})

_YOLACT_ASPECT_RATIOS = [[[0.66685089, 1.7073535, 0.87508774, 1.16524493, 0.49059086]]] * 6

resnet101_backbone = backbone_base.copy({
    'name': 'ResNet101',
    'path': 'resnet101_reducedfc.pth',
    'type': ResNetBackbone,
    'args': ([3, 4, 23, 3],),
    'transform': resnet_transform,
    'selected_layers': list(range(2, 8)),
    'pred_scales': [[1]] * 6,
    'pred_aspect_ratios': _YOLACT_ASPECT_RATIOS,
})

# YOLACT++: deformable convs in the last 3 stages, every 3rd block.
resnet101_dcn_inter3_backbone = resnet101_backbone.copy({
    'name': 'ResNet101_DCN_Interval3',
    'args': ([3, 4, 23, 3], [0, 4, 23, 3], 3),
})

resnet50_backbone = resnet101_backbone.copy({
    'name': 'ResNet50',
    'path': 'resnet50-19c8e357.pth',
    'args': ([3, 4, 6, 3],),
})

resnet50_dcnv2_backbone = resnet50_backbone.copy({
    'name': 'ResNet50_DCNv2',
    'args': ([3, 4, 6, 3], [0, 4, 6, 3]),
})

# A light backbone for CPU training from scratch; loads torchvision's resnet18 ImageNet weights too.
resnet18_backbone = resnet50_backbone.copy({
    'name': 'ResNet18',
    'path': 'resnet18-f37072fd.pth',
    'args': ([2, 2, 2, 2], [0, 0, 0, 0], 1, [], BasicBlock),
})

darknet53_backbone = backbone_base.copy({
    'name': 'DarkNet53',
    'path': 'darknet53.pth',
    'type': DarkNetBackbone,
    'args': ([1, 2, 8, 8, 4],),
    'transform': darknet_transform,
    'selected_layers': list(range(3, 9)),
    'pred_scales': [[3.5, 4.95], [3.6, 4.90], [3.3, 4.02], [2.7, 3.10], [2.1, 2.37], [1.8, 1.92]],
    'pred_aspect_ratios': [[[1, sqrt(2), 1 / sqrt(2), sqrt(3), 1 / sqrt(3)][:n], [1]]
                           for n in [3, 5, 5, 5, 3, 3]],
})

# Each inner list is one backbone stage: 'M' a max pool, an int a 3x3 conv with that many
# channels, or a (layer, kwargs) tuple.
vgg16_arch = [[64, 64],
              ['M', 128, 128],
              ['M', 256, 256, 256],
              [('M', {'kernel_size': 2, 'stride': 2, 'ceil_mode': True}), 512, 512, 512],
              ['M', 512, 512, 512],
              [('M', {'kernel_size': 3, 'stride': 1, 'padding': 1}),
               (1024, {'kernel_size': 3, 'padding': 6, 'dilation': 6}),
               (1024, {'kernel_size': 1})]]

vgg16_backbone = backbone_base.copy({
    'name': 'VGG16',
    'path': 'vgg16_reducedfc.pth',
    'type': VGGBackbone,
    'args': (vgg16_arch, [(256, 2), (128, 2), (128, 1), (128, 1)], [3]),
    'transform': vgg_transform,
    'selected_layers': [3] + list(range(5, 10)),
    'pred_scales': [[5, 4]] * 6,
    'pred_aspect_ratios': [[[1], [1, sqrt(2), 1 / sqrt(2), sqrt(3), 1 / sqrt(3)][:n]]
                           for n in [3, 5, 5, 5, 3, 3]],
})


# ----------------------- MASK BRANCH TYPES ----------------------- #

# 'direct' (fc-mask of the paper's ablation) is a dropped research option; every shipped config
# uses 'lincomb': coefficients per anchor times prototypes from the protonet.
mask_type = Config({
    'direct': 0,
    'lincomb': 1,
})


# ----------------------- ACTIVATION FUNCTIONS ----------------------- #

activation_func = Config({
    'tanh': torch.tanh,
    'sigmoid': torch.sigmoid,
    'softmax': lambda x: F.softmax(x, dim=-1),
    'relu': lambda x: F.relu(x, inplace=True),
    'none': lambda x: x,
})


# ----------------------- FPN DEFAULTS ----------------------- #

fpn_base = Config({
    'num_features': 256,
    'interpolation_mode': 'bilinear',
    # Extra levels made from the last one: P6, P7.
    'num_downsample': 1,
    # Make the extra levels with a stride-2 3x3 conv (True) or a stride-2 subsampling (False).
    'use_conv_downsample': False,
    # Padding of the 3x3 prediction convs (False only for very old checkpoints).
    'pad': True,
    'relu_downsample_layers': False,
    'relu_pred_layers': True,
})


# ----------------------- CONFIG DEFAULTS ----------------------- #

coco_base_config = Config({
    'dataset': coco2014_dataset,
    'num_classes': 81,  # includes the background class

    # Training schedule
    'max_iter': 400000,
    'max_num_detections': 100,
    'lr': 1e-3,
    'momentum': 0.9,
    'decay': 5e-4,
    'gamma': 0.1,
    'lr_steps': (280000, 360000, 400000),
    # Linear warm-up from lr_warmup_init to lr over the first lr_warmup_until iterations.
    'lr_warmup_init': 1e-4,
    'lr_warmup_until': 500,
    # 'sgd' (momentum, the original's) or 'adamw' (decoupled weight decay `decay`).
    'optimizer': 'sgd',

    # Loss weights
    'conf_alpha': 1,
    'bbox_alpha': 1.5,
    'mask_alpha': 0.4 / 256 * 140 * 140,

    # False: skip the mask branch at eval time (boxes only).
    'eval_mask_branch': True,

    # Detect / NMS
    'nms_top_k': 200,
    'nms_conf_thresh': 0.05,
    'nms_thresh': 0.5,

    # Mask branch
    'mask_type': mask_type.lincomb,
    # How many positives per image get a mask loss (masks are image-sized, so this bounds memory).
    'masks_to_train': 100,
    # Which FPN level (or backbone layer) feeds the protonet; None = the image itself.
    'mask_proto_src': None,
    'mask_proto_net': [(256, 3, {}), (256, 3, {})],
    # Add an all-ones prototype.
    'mask_proto_bias': False,
    'mask_proto_prototype_activation': activation_func.relu,
    'mask_proto_mask_activation': activation_func.sigmoid,
    'mask_proto_coeff_activation': activation_func.tanh,
    # Crop assembled masks with the ground-truth box in the loss (and the predicted box at eval).
    'mask_proto_crop': True,
    # Grow the crop box by this fraction on each side.
    'mask_proto_crop_expand': 0,
    # Optional regulariser on the prototypes: None, 'l1' or 'disj' (loss term 'P').
    'mask_proto_loss': None,
    'mask_proto_binarize_downsampled_gt': True,
    'mask_proto_coeff_diversity_loss': False,  # loss term 'D'
    'mask_proto_coeff_diversity_alpha': 1,
    # Divide the mask loss by the box area relative to the prototype size, as ROI pooling would.
    'mask_proto_normalize_emulate_roi_pooling': False,
    # Set by eval.py --display_lincomb: keep the per-prototype masks for drawing.
    'mask_proto_debug': False,

    # Data augmentation
    'augment_photometric_distort': True,
    'augment_expand': True,
    'augment_random_sample_crop': True,
    'augment_random_mirror': True,
    'augment_random_flip': False,
    'augment_random_rot90': False,
    # Drop boxes narrower/shorter than this at resize time. As in the original, training compares
    # it with pixel sizes (so only near-empty boxes go) and evaluation with image fractions.
    'discard_box_width': 4 / 550,
    'discard_box_height': 4 / 550,

    # Keep BatchNorm in eval mode with frozen affine parameters (train.py turns this on for
    # per-card batches below 6, where batch statistics are too noisy).
    'freeze_bn': False,

    'fpn': None,
    # One prediction head shared by every FPN level.
    'share_prediction_module': False,

    # Confidence loss variants (default: softmax + OHEM)
    'use_focal_loss': False,
    'focal_loss_alpha': 0.25,
    'focal_loss_gamma': 2,
    'focal_loss_init_pi': 0.01,
    'use_sigmoid_focal_loss': False,
    'use_objectness_score': False,
    # Image-level class presence loss (term 'E').
    'use_class_existence_loss': False,
    'class_existence_alpha': 1,
    # Semantic segmentation auxiliary loss (term 'S'), training only.
    'use_semantic_segmentation_loss': False,
    'semantic_segmentation_alpha': 1,

    # Prediction heads
    'extra_head_net': None,
    'head_layer_params': {'kernel_size': 3, 'padding': 1},
    # Extra 3x3 convs before the (box, conf, mask) layers.
    'extra_layers': (0, 0, 0),
    # This port's: GroupNorm groups after each 3x3 conv of the heads and the protonet (0 = none, as
    # in the original; a from-scratch model may learn faster with it).
    'head_norm_groups': 0,

    # Matching
    'positive_iou_threshold': 0.5,
    'negative_iou_threshold': 0.5,
    'ohem_negpos_ratio': 3,
    # Anchors overlapping a crowd box by more than this are not negatives.
    'crowd_iou_threshold': 1,

    # Number of prototypes: kept for the original's configs; Yolact computes its own (net.mask_dim)
    # from the protonet's last layer and never writes it here.
    'mask_dim': None,

    # Input size (images are resized to max_size x max_size).
    'max_size': 300,
    # Resize keeping the aspect ratio to an area of about max_size^2 (training only).
    'preserve_aspect_ratio': False,

    'backbone': None,
    'name': 'base_config',

    # YOLACT++ mask re-scoring
    'use_maskiou': False,
    'maskiou_net': [],
    # Masks with fewer pixels than this do not train the mask-IoU head.
    'discard_mask_area': -1,
    'maskiou_alpha': 1.0,
    'rescore_mask': False,
    'rescore_bbox': False,
    'maskious_to_train': -1,
})


# ----------------------- YOLACT v1.0 CONFIGS ----------------------- #

yolact_base_config = coco_base_config.copy({
    'name': 'yolact_base',
    'dataset': coco2017_dataset,
    'num_classes': len(coco2017_dataset.class_names) + 1,
    'max_size': 550,
    'lr_steps': (280000, 600000, 700000, 750000),
    'max_iter': 800000,
    'backbone': resnet101_backbone.copy({
        'selected_layers': list(range(1, 4)),
        'use_pixel_scales': True,
        'preapply_sqrt': False,
        'use_square_anchors': True,
        'pred_aspect_ratios': [[[1, 1 / 2, 2]]] * 5,
        'pred_scales': [[24], [48], [96], [192], [384]],
    }),
    'fpn': fpn_base.copy({
        'use_conv_downsample': True,
        'num_downsample': 2,
    }),
    'mask_type': mask_type.lincomb,
    'mask_alpha': 6.125,
    'mask_proto_src': 0,
    # Three 3x3 convs, x2 bilinear upsampling, a 3x3 conv and 32 prototypes.
    'mask_proto_net': [(256, 3, {'padding': 1})] * 3 + [(None, -2, {}), (256, 3, {'padding': 1})]
                      + [(32, 1, {})],
    'mask_proto_normalize_emulate_roi_pooling': True,
    'share_prediction_module': True,
    'extra_head_net': [(256, 3, {'padding': 1})],
    'positive_iou_threshold': 0.5,
    'negative_iou_threshold': 0.4,
    'crowd_iou_threshold': 0.7,
    'use_semantic_segmentation_loss': True,
})


def _rescaled_pred_scales(size: int):
    base = yolact_base_config
    return [[int(x[0] / base.max_size * size)] for x in base.backbone.pred_scales]


yolact_im400_config = yolact_base_config.copy({
    'name': 'yolact_im400',
    'max_size': 400,
    'backbone': yolact_base_config.backbone.copy({'pred_scales': _rescaled_pred_scales(400)}),
})

yolact_im700_config = yolact_base_config.copy({
    'name': 'yolact_im700',
    'masks_to_train': 300,
    'max_size': 700,
    'backbone': yolact_base_config.backbone.copy({'pred_scales': _rescaled_pred_scales(700)}),
})

_YOLACT_BASE_HEAD = {
    'selected_layers': list(range(1, 4)),
    'pred_scales': yolact_base_config.backbone.pred_scales,
    'pred_aspect_ratios': yolact_base_config.backbone.pred_aspect_ratios,
    'use_pixel_scales': True,
    'preapply_sqrt': False,
    'use_square_anchors': True,
}

yolact_darknet53_config = yolact_base_config.copy({
    'name': 'yolact_darknet53',
    'backbone': darknet53_backbone.copy({**_YOLACT_BASE_HEAD, 'selected_layers': list(range(2, 5))}),
})

yolact_resnet50_config = yolact_base_config.copy({
    'name': 'yolact_resnet50',
    'backbone': resnet50_backbone.copy(_YOLACT_BASE_HEAD),
})

yolact_resnet50_pascal_config = yolact_resnet50_config.copy({
    'name': None,  # set_cfg names it yolact_resnet50_pascal
    'dataset': pascal_sbd_dataset,
    'num_classes': len(pascal_sbd_dataset.class_names) + 1,
    'max_iter': 120000,
    'lr_steps': (60000, 100000),
    'backbone': yolact_resnet50_config.backbone.copy({
        'pred_scales': [[32], [64], [128], [256], [512]],
        'use_square_anchors': False,
    }),
})


# ----------------------- YOLACT++ CONFIGS ----------------------- #

_YOLACT_PLUS_HEAD = {
    'selected_layers': list(range(1, 4)),
    'pred_aspect_ratios': [[[1, 1 / 2, 2]]] * 5,
    # Three scales per level, a third of an octave apart.
    'pred_scales': [[i * 2 ** (j / 3.0) for j in range(3)] for i in [24, 48, 96, 192, 384]],
    'use_pixel_scales': True,
    'preapply_sqrt': False,
    'use_square_anchors': False,
}

yolact_plus_base_config = yolact_base_config.copy({
    'name': 'yolact_plus_base',
    'backbone': resnet101_dcn_inter3_backbone.copy(_YOLACT_PLUS_HEAD),
    'use_maskiou': True,
    'maskiou_net': [(8, 3, {'stride': 2}), (16, 3, {'stride': 2}), (32, 3, {'stride': 2}),
                    (64, 3, {'stride': 2}), (128, 3, {'stride': 2})],
    'maskiou_alpha': 25,
    'rescore_bbox': False,
    'rescore_mask': True,
    'discard_mask_area': 5 * 5,
})

yolact_plus_resnet50_config = yolact_plus_base_config.copy({
    'name': 'yolact_plus_resnet50',
    'backbone': resnet50_dcnv2_backbone.copy(_YOLACT_PLUS_HEAD),
})


# ----------------------- REGISTRY ----------------------- #

cfg = yolact_base_config.copy()


def _registry(kind: str) -> Dict[str, Config]:
    """Every module-level Config whose name ends in `kind` ('_config' or '_dataset')."""
    return {name: val for name, val in globals().items()
            if isinstance(val, Config) and name.endswith(kind) and not name.startswith('_')}


def config_names() -> list:
    return sorted(_registry('_config'))


def _lookup(name: str, kind: str) -> Config:
    known = _registry(kind)
    if name in known:
        return known[name]
    if name + kind in known:
        return known[name + kind]
    raise ConfigError(f"unknown {kind.strip('_')} '{name}'; valid names: {', '.join(sorted(known))}")


def own_config(config: Optional[Config] = None) -> Config:
    """A copy of `config` for a network, transform or loss to keep: neither a later ``set_cfg`` nor
    changes to `config` reach it. Without `config`, a copy of the active ``cfg``, which is how the
    original's ``Yolact()``, ``FastBaseTransform()``, ``MultiBoxLoss(...)`` find theirs."""
    # Deep: set_cfg shares sub-configs (backbone, dataset) with the registry, and they are mutable.
    return copy.deepcopy(cfg if config is None else config)


def config_for(config_name: str) -> Config:
    """A fresh config of its own for `config_name` (e.g. 'yolact_base_config' or 'yolact_base'):
    changing it changes neither the registry nor the active ``cfg``."""
    config = own_config(_lookup(config_name, '_config'))
    if config.name is None:
        config.name = config_name.split('_config')[0]
    return config


def set_cfg(config_name: str) -> Config:
    """Make `config_name` (e.g. 'yolact_base_config' or 'yolact_base') the active config, in place;
    returns it (the global ``cfg``), to pass to Yolact, MultiBoxLoss, the datasets, ..."""
    cfg.replace(config_for(config_name))
    return cfg


def dataset_for(dataset_name: str) -> Config:
    """A fresh dataset config of its own for `dataset_name` (e.g. 'coco2017_dataset')."""
    return own_config(_lookup(dataset_name, '_dataset'))


def set_dataset(dataset_name: str) -> None:
    """Make `dataset_name` (e.g. 'coco2017_dataset') the dataset of the active config."""
    cfg.dataset = dataset_for(dataset_name)


def describe_classes(names, limit: int = 8) -> str:
    """'3 classes (coin, tile, badge)', shortened after `limit` names."""
    names = list(names)
    shown = ', '.join(names[:limit]) + (', ...' if len(names) > limit else '')
    return f"{len(names)} class{'es' if len(names) != 1 else ''} ({shown})"


def adopt_dataset(config: Config, dataset: Config, source: str, say: Optional[Callable[[str], None]] = None) -> None:
    """Make `dataset` (a dataset Config whose classes were read from a file, e.g. by
    data.coco.dataset_from_annotations) the dataset of `config`, in place. The class-dependent
    layers follow: num_classes = classes + 1 (background). `say` gets one line of what was derived."""
    before = config.num_classes
    config.dataset = dataset
    config.num_classes = len(dataset.class_names) + 1
    if say is not None:
        ids = sorted(dataset.label_map) if dataset.label_map else list(range(1, config.num_classes))
        id_text = (f'category ids {ids[0]}..{ids[-1]}' if ids == list(range(ids[0], ids[-1] + 1))
                   else f'category ids {", ".join(map(str, ids[:8]))}{", ..." if len(ids) > 8 else ""}')
        change = '' if before == config.num_classes else f' (the config had {before})'
        say(f'Classes from {source}: {describe_classes(dataset.class_names)}, {id_text} -> labels '
            f'1..{config.num_classes - 1}; num_classes {config.num_classes}{change}.')


def use_dataset(dataset: Config, source: str, say: Optional[Callable[[str], None]] = None) -> None:
    """`adopt_dataset` for the active config."""
    adopt_dataset(cfg, dataset, source, say)


# ----------------------- DEMO CONFIG (synthetic dataset, CPU) ----------------------- #

# The demo (run_demo.sh): trains from scratch on the synthetic shapes, on a few CPU cores, in about
# a quarter of an hour, since a fresh machine has no pretrained weights. Every choice below spends
# the few images such a run sees where they teach most: a small, half-width backbone, GroupNorm in
# the heads, several anchors per object, a heavier class branch, AdamW and no augmentation that
# shrinks the already small shapes. The measurements behind each are in README.md (Results).
_DEMO_WIDTH = 32
yolact_resnet18_synthetic_config = yolact_base_config.copy({
    'name': 'yolact_resnet18_synthetic',
    'dataset': synthetic_dataset,
    'num_classes': len(synthetic_dataset.class_names) + 1,
    'max_size': 160,
    'optimizer': 'adamw',
    'lr': 2e-3,
    'lr_warmup_init': 1e-4,
    'lr_warmup_until': 100,
    'lr_steps': (1800, 1920),
    'max_iter': 2000,
    'augment_photometric_distort': False,
    'augment_expand': False,
    'augment_random_sample_crop': False,
    'positive_iou_threshold': 0.4,
    'negative_iou_threshold': 0.3,
    'conf_alpha': 3,
    'semantic_segmentation_alpha': 3,
    'extra_layers': (0, 1, 0),
    'head_norm_groups': 8,
    'backbone': resnet18_backbone.copy({
        'name': 'ResNet18-half-width',
        'path': None,  # no pretrained weights exist at this width
        'args': resnet18_backbone.args + (32,),
        'selected_layers': list(range(1, 4)),
        'pred_scales': [[s, round(s * 2 ** (1 / 3)), round(s * 2 ** (2 / 3))] for s in (10, 20, 40, 80, 160)],
        'pred_aspect_ratios': [[[1, 1 / 2, 2]]] * 5,
        'use_pixel_scales': True,
        'preapply_sqrt': False,
        'use_square_anchors': False,
    }),
    'fpn': fpn_base.copy({
        'num_features': _DEMO_WIDTH,
        'use_conv_downsample': True,
        'num_downsample': 2,
    }),
    'mask_proto_net': [(_DEMO_WIDTH, 3, {'padding': 1})] * 2 + [(None, -2, {}), (_DEMO_WIDTH, 3, {'padding': 1})]
                      + [(16, 1, {})],
    'extra_head_net': [(_DEMO_WIDTH, 3, {'padding': 1})],
    'masks_to_train': 64,
})
