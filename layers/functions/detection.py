"""Test-time detection: decode the network's box regressions and run non-maximum suppression.

Three suppression schemes, picked by two flags on a `Detect` instance (the original's names):
  * Fast NMS (``use_fast_nms=True``), the one from the YOLACT paper (sec. 3.4): per class, the
    top-k candidates by score are compared all-against-all in one IoU matrix; a candidate is dropped
    when any *higher-scoring* candidate of its class overlaps it by more than the threshold, even if
    that candidate was itself dropped. That is what makes it one batched matrix operation and what
    separates it from greedy NMS (a suppressed box can still suppress).
  * cross-class Fast NMS (``use_fast_nms=True, use_cross_class_nms=True``): the same over every
    candidate at once, each scored by its best class.
  * traditional greedy NMS (``use_fast_nms=False``), per class, through torchvision.

Outputs follow the original exactly so eval code and user scripts keep working: one entry per image,
``{'detection': {'box', 'mask', 'class', 'score'[, 'proto']} or None, 'net': net}``, where
'class' counts foreground classes from 0 (the background score column is dropped).
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from data.config import own_config
from layers.box_utils import decode, jaccard

# (boxes [D, 4], mask coefficients [D, M], classes [D], scores [D])
Detections = Tuple[Tensor, Tensor, Tensor, Tensor]


class Detect:
    """Turn raw YOLACT predictions into per-image detections.

    Args:
        num_classes: number of score columns, background included (``cfg.num_classes``).
        bkg_label: index of the background column; YOLACT always puts it at 0.
        top_k: candidates per class that enter Fast NMS (``cfg.nms_top_k``).
        conf_thresh: a prior becomes a candidate when its best foreground score exceeds this
            (``cfg.nms_conf_thresh``).
        nms_thresh: IoU above which a lower-scoring box is suppressed (``cfg.nms_thresh``).
        max_num_detections: cap on detections per image after per-class NMS
            (``cfg.max_num_detections``; by default the active cfg's, as the original reads it).
        max_size: the network's input size in pixels (``cfg.max_size``; by default the active
            cfg's); traditional NMS measures boxes at this scale, see `traditional_nms`.
    Both defaults are read once, here: a later ``set_cfg`` does not change a Detect already built.

    The switches ``use_fast_nms`` and ``use_cross_class_nms`` are plain attributes, both False after
    construction as in the original; eval.py sets them from its command line.
    """

    def __init__(self, num_classes: int, bkg_label: int, top_k: int, conf_thresh: float,
                 nms_thresh: float, max_num_detections: Optional[int] = None,
                 max_size: Optional[int] = None):
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background too and must be >= 2, got {num_classes}")
        if bkg_label != 0:
            raise ValueError(f"YOLACT's score layout has the background in column 0, got bkg_label={bkg_label}")
        if nms_thresh <= 0:
            raise ValueError(f"nms_thresh must be positive, got {nms_thresh}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")

        if max_num_detections is None or max_size is None:
            active = own_config()
            max_num_detections = active.max_num_detections if max_num_detections is None else max_num_detections
            max_size = active.max_size if max_size is None else max_size

        self.num_classes = num_classes
        self.background_label = bkg_label
        self.top_k = top_k
        self.conf_thresh = conf_thresh
        self.nms_thresh = nms_thresh
        self.max_num_detections = max_num_detections
        self.max_size = max_size

        self.use_cross_class_nms = False
        self.use_fast_nms = False
        # None: per-class Fast NMS filters candidates by indexing on the CPU and by masking on
        # accelerators (see `_filters_on_host`); True/False forces one way.
        self.filter_candidates: Optional[bool] = None

    def __call__(self, predictions: Dict[str, Tensor], net=None) -> List[Dict]:
        """Detect objects in every image of a batch.

        Args:
            predictions: the network's eval-mode outputs:
                'loc'    (Tensor[B, P, 4]) box regressions against the priors,
                'conf'   (Tensor[B, P, num_classes]) class probabilities (background in column 0),
                'mask'   (Tensor[B, P, M]) mask coefficients,
                'priors' (Tensor[P, 4]) in relative (cx, cy, w, h),
                'proto'  (Tensor[B, H, W, M]), optional, the prototype masks.
            net: passed through untouched (postprocess uses its maskiou_net for YOLACT++).
        Returns:
            A list of B dicts ``{'detection': det, 'net': net}``; det is None when no prior passes
            ``conf_thresh``, otherwise a dict with 'box' (Tensor[D, 4], relative (x1, y1, x2, y2)),
            'mask' (Tensor[D, M] coefficients), 'class' (Tensor[D] int64, foreground index),
            'score' (Tensor[D]) and, when given, 'proto' (Tensor[H, W, M]) of that image.
        """
        loc = predictions['loc']
        conf = predictions['conf']
        coeffs = predictions['mask']
        priors = predictions['priors']
        proto = predictions.get('proto')

        batch_size, num_priors = loc.shape[:2]
        if conf.shape[-1] != self.num_classes:
            raise ValueError(f"expected conf with {self.num_classes} class columns, got shape {tuple(conf.shape)}")

        boxes = decode(loc, priors)  # [B, P, 4], all images at once
        # Foreground scores, class-major: [B, C-1, P]. A transposed view: each prior's scores stay
        # contiguous, which is what the per-prior candidate test and row gathers below want.
        fg_scores = conf.view(batch_size, num_priors, self.num_classes)[:, :, 1:].transpose(1, 2)

        out = []
        for b in range(batch_size):
            det = self.detect_image(fg_scores[b], boxes[b], coeffs[b])
            if det is not None and proto is not None:
                det['proto'] = proto[b]
            out.append({'detection': det, 'net': net})
        return out

    def detect_image(self, scores: Tensor, boxes: Tensor, coeffs: Tensor) -> Optional[Dict[str, Tensor]]:
        """Threshold and suppress the candidates of one image.

        Args:
            scores (Tensor[C, P]): foreground class scores per prior.
            boxes (Tensor[P, 4]) in relative (x1, y1, x2, y2)
            coeffs (Tensor[P, M]): mask coefficients.
        Returns:
            The 'detection' dict described in `__call__`, or None if no prior is a candidate.
        """
        # A prior enters NMS if any foreground class is confident; from then on every class's
        # score for it is considered, as in the original.
        per_prior = scores.t()  # [P, C]
        candidate = per_prior.amax(dim=1) > self.conf_thresh
        if self.use_fast_nms and not self.use_cross_class_nms and not self._filters_on_host(scores.device):
            return self._fast_nms_masked(scores, candidate, boxes, coeffs)
        # Gather whole rows (one prior's scores are contiguous), then back to class-major.
        scores = per_prior[candidate].t()
        if scores.shape[1] == 0:
            return None
        boxes = boxes[candidate]
        coeffs = coeffs[candidate]

        if self.use_fast_nms:
            if self.use_cross_class_nms:
                result = self.cc_fast_nms(boxes, coeffs, scores, self.nms_thresh, self.top_k)
            else:
                result = self.fast_nms(boxes, coeffs, scores, self.nms_thresh, self.top_k)
        elif self.use_cross_class_nms:
            result = self.cc_traditional_nms(boxes, coeffs, scores, self.nms_thresh, self.conf_thresh)
        else:
            result = self.traditional_nms(boxes, coeffs, scores, self.nms_thresh, self.conf_thresh)

        out_boxes, out_coeffs, classes, out_scores = result
        return {'box': out_boxes, 'mask': out_coeffs, 'class': classes, 'score': out_scores}

    def fast_nms(self, boxes: Tensor, masks: Tensor, scores: Tensor, iou_threshold: float = 0.5,
                 top_k: int = 200, second_threshold: bool = False) -> Detections:
        """Per-class Fast NMS, then keep the ``max_num_detections`` best over all classes.

        Args:
            boxes (Tensor[N, 4]) in (x1, y1, x2, y2)
            masks (Tensor[N, M]): per-candidate mask coefficients (any per-box payload).
            scores (Tensor[C, N]): per-class scores.
            second_threshold: also drop kept boxes whose class score is not above conf_thresh. The
                paper recommends it; the released models were evaluated without it (default False).
        Returns:
            (boxes [D, 4], masks [D, M], classes [D], scores [D]), sorted by score, descending.
        """
        num_classes, num_boxes = scores.shape
        # topk rather than a full sort: same result up to the order of exactly tied scores, and
        # several times faster on the ~19k priors of a 550 px image.
        sorted_scores, order = scores.topk(min(top_k, num_boxes), dim=1)  # [C, K]

        keep = self._fast_nms_keep(boxes[order], iou_threshold)  # [C, K]
        if second_threshold:
            keep &= sorted_scores > self.conf_thresh

        classes = torch.arange(num_classes, device=boxes.device)[:, None].expand_as(keep)[keep]
        kept_idx = order[keep]
        kept_scores = sorted_scores[keep]

        kept_scores, rank = kept_scores.sort(dim=0, descending=True)
        rank = rank[:self.max_num_detections]
        kept_scores = kept_scores[:self.max_num_detections]
        kept_idx = kept_idx[rank]
        # Gather the mask coefficients only for the survivors, not for every C x K candidate.
        return boxes[kept_idx], masks[kept_idx], classes[rank], kept_scores

    @staticmethod
    def _fast_nms_keep(cls_boxes: Tensor, iou_threshold: float) -> Tensor:
        """Fast NMS decision per class.

        Args:
            cls_boxes (Tensor[C, K, 4]) in (x1, y1, x2, y2), each class's boxes by decreasing score.
        Returns:
            Tensor[C, K] bool: True where no higher-ranked box of the class overlaps by more than
            iou_threshold.
        """
        # Only "a better box overlaps me" counts: for box j, the boxes i < j. The IoU matrix is
        # symmetric to the bit (min/max, sums and products commute), so the lower triangle of row j
        # holds the same values as the upper triangle of column j, and the reduction runs over
        # contiguous memory (amax, no indices) instead of across rows.
        iou = jaccard(cls_boxes, cls_boxes).tril_(diagonal=-1)
        return iou.amax(dim=2) <= iou_threshold

    def _filters_on_host(self, device: torch.device) -> bool:
        """Whether per-class Fast NMS first drops the non-candidate priors by boolean indexing.

        On the CPU that shrinks the top-k and costs nothing extra. On an accelerator the variable
        result size would make the host wait for the device, so `_fast_nms_masked` keeps every prior
        and masks instead, and the host waits only once, for the final detection count. The
        attribute ``filter_candidates`` (None = decide by device) forces either way.
        """
        if self.filter_candidates is None:
            return device.type == 'cpu'
        return bool(self.filter_candidates)

    def _fast_nms_masked(self, scores: Tensor, candidate: Tensor, boxes: Tensor, coeffs: Tensor
                         ) -> Optional[Dict[str, Tensor]]:
        """Per-class Fast NMS with the candidate test as a mask (same result as `detect_image`
        followed by `fast_nms`, up to the order of exactly tied scores).

        Args:
            scores (Tensor[C, P]), candidate (Tensor[P] bool), boxes (Tensor[P, 4]) in
            (x1, y1, x2, y2), coeffs (Tensor[P, M]).
        """
        num_classes, num_priors = scores.shape
        # Non-candidates score -inf: they rank after every candidate of their class, so they can
        # only ever suppress each other, and they are dropped below.
        masked = scores.masked_fill(~candidate[None, :], float('-inf'))
        sorted_scores, order = masked.topk(min(self.top_k, num_priors), dim=1)  # [C, K]
        keep = self._fast_nms_keep(boxes[order], self.nms_thresh)
        keep &= sorted_scores > float('-inf')

        flat_scores = sorted_scores.masked_fill(~keep, float('-inf')).reshape(-1)
        best, pos = flat_scores.topk(min(self.max_num_detections, flat_scores.numel()))
        count = int((best > float('-inf')).sum())  # the one wait for the device
        if count == 0:
            return None
        best, pos = best[:count], pos[:count]
        kept_idx = order.reshape(-1)[pos]
        classes = torch.div(pos, order.shape[1], rounding_mode='floor')
        return {'box': boxes[kept_idx], 'mask': coeffs[kept_idx], 'class': classes, 'score': best}

    def cc_fast_nms(self, boxes: Tensor, masks: Tensor, scores: Tensor, iou_threshold: float = 0.5,
                    top_k: int = 200) -> Detections:
        """Cross-class Fast NMS: every candidate competes with every other, scored by its best class.

        Same arguments as `fast_nms`. As in the original, the result is not capped at
        ``max_num_detections`` (``top_k`` already bounds it). Sorted by score, descending.
        """
        best_scores, classes = scores.max(dim=0)
        order = best_scores.topk(min(top_k, best_scores.shape[0])).indices
        ranked = boxes[order]
        iou = jaccard(ranked, ranked).triu_(diagonal=1)
        kept_idx = order[iou.max(dim=0).values <= iou_threshold]
        return boxes[kept_idx], masks[kept_idx], classes[kept_idx], best_scores[kept_idx]

    def _pixel_boxes(self, boxes: Tensor) -> Tensor:
        """Relative boxes -> boxes for torchvision's NMS that reproduce the original's Cython IoU.

        The original ran Fast R-CNN's NMS on boxes scaled to ``max_size`` pixels, which counts a box
        as ``x2 - x1 + 1`` pixels wide. Adding one pixel to x2 and y2 gives torchvision's IoU exactly
        that area and intersection, so the same boxes are kept as with the released models.
        """
        scaled = boxes * self.max_size
        return torch.cat((scaled[:, :2], scaled[:, 2:] + 1), dim=1)

    def traditional_nms(self, boxes: Tensor, masks: Tensor, scores: Tensor, iou_threshold: float = 0.5,
                        conf_thresh: float = 0.05) -> Detections:
        """Greedy per-class NMS (torchvision's batched_nms) over the (class, box) pairs scoring above
        ``conf_thresh``, then keep the ``max_num_detections`` best.

        Same arguments and result as `fast_nms`.
        """
        cls_idx, box_idx = torch.nonzero(scores > conf_thresh, as_tuple=True)
        pair_scores = scores[cls_idx, box_idx]
        keep = batched_nms(self._pixel_boxes(boxes)[box_idx], pair_scores, cls_idx, iou_threshold)
        keep = keep[:self.max_num_detections]  # batched_nms returns them by decreasing score
        kept_idx = box_idx[keep]
        return boxes[kept_idx], masks[kept_idx], cls_idx[keep], pair_scores[keep]

    def cc_traditional_nms(self, boxes: Tensor, masks: Tensor, scores: Tensor, iou_threshold: float = 0.5,
                           conf_thresh: float = 0.05) -> Detections:
        """Greedy NMS across classes, each box scored by its best class, then keep the
        ``max_num_detections`` best. (The original only printed a warning for this combination and
        ran per-class NMS.) Same arguments and result as `fast_nms`.
        """
        best_scores, classes = scores.max(dim=0)
        confident = torch.nonzero(best_scores > conf_thresh).squeeze(1)
        keep = nms(self._pixel_boxes(boxes[confident]), best_scores[confident], iou_threshold)
        kept_idx = confident[keep[:self.max_num_detections]]
        return boxes[kept_idx], masks[kept_idx], classes[kept_idx], best_scores[kept_idx]
