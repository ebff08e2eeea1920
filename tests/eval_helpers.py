"""Helpers shared by tests/test_eval.py and tests/test_inference.py: a tiny registered config,
checkpoints of it, and networks whose detections the test controls."""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

import data.config as config_module
from data.config import Config, own_config, resnet18_backbone, set_cfg, synthetic_dataset, yolact_base_config

TINY_NAME = 'yolact_evaltiny'
TINY_MAX_SIZE = 64


def tiny_config(name: str = TINY_NAME, num_classes: int = 7, conf_thresh: float = 0.05,
                prototypes: int = 8) -> Config:
    """A ResNet18 YOLACT at 64 px with narrow FPN/heads, on the synthetic dataset."""
    scale = TINY_MAX_SIZE / 550
    return yolact_base_config.copy({
        'name': name,
        'dataset': synthetic_dataset,
        'num_classes': num_classes,
        'max_size': TINY_MAX_SIZE,
        'nms_conf_thresh': conf_thresh,
        'backbone': resnet18_backbone.copy({
            'selected_layers': [1, 2, 3],
            'pred_scales': [[24 * scale * 2 ** i] for i in range(5)],
            'pred_aspect_ratios': [[[1, 1 / 2, 2]]] * 5,
            'use_pixel_scales': True, 'preapply_sqrt': False, 'use_square_anchors': True,
        }),
        'fpn': yolact_base_config.fpn.copy({'num_features': 16}),
        'mask_proto_net': [(16, 3, {'padding': 1}), (None, -2, {}), (prototypes, 1, {})],
        'extra_head_net': [(16, 3, {'padding': 1})],
        'use_semantic_segmentation_loss': False,
    })


def register(monkeypatch, config: Config, attr: Optional[str] = None) -> str:
    """Make `config` findable by set_cfg under `<name>_config` for the test's duration."""
    attr = attr or config.name + '_config'
    monkeypatch.setattr(config_module, attr, config, raising=False)
    return attr


def save_tiny_checkpoint(path: str, config_attr: str) -> None:
    """A randomly initialised network of a registered config, saved like train.py does."""
    from yolact import Yolact
    config = set_cfg(config_attr)
    torch.manual_seed(0)
    net = Yolact(config)
    net.init_weights(None)
    net.save_weights(path)


def gt_detections(coco, image_id: int, with_crowd: bool = False):
    """The ground truth of one image as postprocess-style results (classes 0-based, score 1).

    Returns classes (Tensor[N]), scores (Tensor[N]), boxes (Tensor[N, 4] pixel x1y1x2y2 float),
    masks (Tensor[N, H, W] 0/1)."""
    info = coco.imgs[image_id]
    anns = [a for a in coco.imgToAnns[image_id] if with_crowd or not a.get('iscrowd', 0)]
    classes = torch.tensor([a['category_id'] - 1 for a in anns], dtype=torch.long)
    boxes = torch.tensor([[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2],
                           a['bbox'][1] + a['bbox'][3]] for a in anns], dtype=torch.float32).reshape(-1, 4)
    masks = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])) if anns else \
        torch.zeros(0, info['height'], info['width'], dtype=torch.uint8)
    return classes, torch.ones(len(anns)), boxes, masks.float()


def media_predictor(net: torch.nn.Module, opts=None, class_names: Optional[Sequence[str]] = None):
    """The predictor.Predictor eval.py's --image/--images/--video build for `net`, with the --top_k,
    --score_threshold and --crop of `opts` (deploy.inference.InferenceOptions; default: the flags'
    defaults) and the active config's class names unless given."""
    from deploy.inference import InferenceOptions
    from predictor import Predictor
    opts = opts if opts is not None else InferenceOptions()
    return Predictor.from_network(net, class_names, score_threshold=opts.draw.score_threshold,
                                  top_k=opts.draw.top_k, crop_masks=opts.crop_masks)


class ScriptedNet(torch.nn.Module):
    """Stands in for Yolact in eval mode: returns Detect-style output chosen per call.

    `script(call_index, batch) -> list of detection dicts (or None)` gives, for each image of the
    batch, {'box': relative x1y1x2y2 [D, 4], 'mask': coefficients [D, M], 'class': [D],
    'score': [D], 'proto': [H, W, M]}. postprocess turns proto @ coeffs through a sigmoid into
    masks, so one-hot coefficients and proto = +-20 select exact masks. `config`: what postprocess
    reads (Yolact.config); default: a copy of the active one, which the tests set.
    """

    def __init__(self, script, config: Optional[Config] = None):
        super().__init__()
        self.config = own_config(config)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.script = script
        self.calls = 0
        self.detect = type('DetectSwitches', (), {'use_fast_nms': True, 'use_cross_class_nms': False})()

    def forward(self, batch: torch.Tensor) -> List[Dict]:
        dets = self.script(self.calls, batch)
        self.calls += 1
        return [{'detection': d, 'net': self} for d in dets]


def detection_from_masks(classes: Sequence[int], scores: Sequence[float], masks: torch.Tensor,
                         boxes_xyxy: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """A Detect-style detection whose postprocessed masks are exactly `masks` (Tensor[D, H, W] 0/1)
    at the image size, and whose pixel boxes are `boxes_xyxy` (default: the masks' tight boxes)."""
    d, h, w = masks.shape
    if boxes_xyxy is None:
        boxes_xyxy = torch.stack([_tight_box(m) for m in masks]) if d else torch.zeros(0, 4)
    # postprocess truncates box * size to int; a quarter pixel inside keeps the intended integer.
    rel = (boxes_xyxy.float() + 0.25) / torch.tensor([w, h, w, h], dtype=torch.float32)
    proto = (masks.permute(1, 2, 0).float() * 40 - 20)  # [H, W, D]
    return {'box': rel, 'mask': torch.eye(d), 'class': torch.as_tensor(classes, dtype=torch.long),
            'score': torch.as_tensor(scores, dtype=torch.float32), 'proto': proto}


def _tight_box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
