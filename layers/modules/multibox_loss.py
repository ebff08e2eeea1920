"""The YOLACT training loss.

Terms returned by MultiBoxLoss.forward (keys as in the original, so training logs read the same):
  B  box regression, smooth-L1 on positive anchors                        / number of positives
  M  mask loss: prototypes x coefficients, cropped to the gt box, BCE      / number of positives
  D  coefficient diversity (cfg.mask_proto_coeff_diversity_loss)           / number of positives
  P  prototype regulariser (cfg.mask_proto_loss: 'l1' or 'disj')           / batch size
  C  classification: softmax + online hard negative mining (OHEM) 3:1 by
     default, or one of the focal / objectness variants                    / number of positives
  I  mask-IoU head regression, YOLACT++ (cfg.use_maskiou)                  / number of positives
  E  image-level class existence (cfg.use_class_existence_loss)            / batch size
  S  semantic segmentation on a low-resolution map (cfg.use_semantic_segmentation_loss) / batch size
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from data.config import Config, activation_func, mask_type, own_config
from layers.box_utils import center_size, crop, decode, elemwise_box_iou, elemwise_mask_iou, match

# The 'l1' prototype regulariser is scaled so that a prototype covering this fraction of the image
# (a 20x20 blob on a 70x70 map) costs L1_ALPHA.
L1_EXPECTED_AREA = 20 * 20 / 70 / 70
L1_ALPHA = 0.1


@dataclass(frozen=True)
class LossOptions:
    """The config fields the loss depends on, read once when the loss is built."""
    crowd_iou_threshold: float
    bbox_alpha: float
    conf_alpha: float
    mask_alpha: float
    masks_to_train: int
    mask_proto_crop: bool
    mask_proto_normalize_emulate_roi_pooling: bool
    mask_proto_binarize_downsampled_gt: bool
    mask_activation: Callable[[Tensor], Tensor]
    mask_proto_loss: Optional[str]
    coeff_diversity_loss: bool
    coeff_diversity_alpha: float
    use_focal_loss: bool
    use_sigmoid_focal_loss: bool
    use_objectness_score: bool
    focal_loss_alpha: float
    focal_loss_gamma: float
    use_class_existence_loss: bool
    class_existence_alpha: float
    use_semantic_segmentation_loss: bool
    semantic_segmentation_alpha: float
    use_maskiou: bool
    discard_mask_area: float
    maskiou_alpha: float
    maskious_to_train: int

    @classmethod
    def from_config(cls, cfg: Config) -> 'LossOptions':
        if cfg.mask_type != mask_type.lincomb:
            raise ValueError(f"MultiBoxLoss supports only mask_type.lincomb ({mask_type.lincomb}), "
                             f"got cfg.mask_type = {cfg.mask_type!r}")
        if cfg.mask_proto_loss not in (None, 'l1', 'disj'):
            raise ValueError(f"cfg.mask_proto_loss must be None, 'l1' or 'disj', got {cfg.mask_proto_loss!r}")
        return cls(
            crowd_iou_threshold=cfg.crowd_iou_threshold,
            bbox_alpha=cfg.bbox_alpha,
            conf_alpha=cfg.conf_alpha,
            mask_alpha=cfg.mask_alpha,
            masks_to_train=cfg.masks_to_train,
            mask_proto_crop=cfg.mask_proto_crop,
            mask_proto_normalize_emulate_roi_pooling=cfg.mask_proto_normalize_emulate_roi_pooling,
            mask_proto_binarize_downsampled_gt=cfg.mask_proto_binarize_downsampled_gt,
            mask_activation=cfg.mask_proto_mask_activation,
            mask_proto_loss=cfg.mask_proto_loss,
            coeff_diversity_loss=cfg.mask_proto_coeff_diversity_loss,
            coeff_diversity_alpha=cfg.mask_proto_coeff_diversity_alpha,
            use_focal_loss=cfg.use_focal_loss,
            use_sigmoid_focal_loss=cfg.use_sigmoid_focal_loss,
            use_objectness_score=cfg.use_objectness_score,
            focal_loss_alpha=cfg.focal_loss_alpha,
            focal_loss_gamma=cfg.focal_loss_gamma,
            use_class_existence_loss=cfg.use_class_existence_loss,
            class_existence_alpha=cfg.class_existence_alpha,
            use_semantic_segmentation_loss=cfg.use_semantic_segmentation_loss,
            semantic_segmentation_alpha=cfg.semantic_segmentation_alpha,
            use_maskiou=cfg.use_maskiou,
            discard_mask_area=cfg.discard_mask_area,
            maskiou_alpha=cfg.maskiou_alpha,
            maskious_to_train=cfg.maskious_to_train,
        )


# ----------------------------------------------------------------------------------------------
# Confidence losses. conf (Tensor[B, P, C]) raw logits, class 0 = background;
# conf_t (Tensor[B, P]) int64: 0 background, c > 0 class c, -1 neutral (ignored).
# Each returns the un-normalised sum.
# ----------------------------------------------------------------------------------------------

def ohem_conf_loss(conf: Tensor, conf_t: Tensor, negpos_ratio: float) -> Tensor:
    """Softmax cross-entropy on all positives plus the hardest negatives, negpos_ratio per positive
    in each image (SSD's hard negative mining). Neutrals are never used."""
    num_priors = conf.size(1)
    pos = conf_t > 0
    ce = F.cross_entropy(conf.flatten(0, 1), conf_t.clamp(min=0).flatten(), reduction='none')
    ce = ce.view_as(conf_t)

    with torch.no_grad():
        # Hardness of a negative = -log p(background); positives and neutrals rank last.
        hardness = torch.logsumexp(conf, dim=-1) - conf[..., 0]
        candidate = conf_t == 0
        hardness = hardness.masked_fill(~candidate, 0)
        order = hardness.argsort(dim=1, descending=True)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(num_priors, device=conf.device).expand_as(order))
        num_neg = (negpos_ratio * pos.sum(dim=1, keepdim=True)).clamp(max=num_priors - 1)
        neg = (rank < num_neg) & candidate

    # where(), not a product: the dropped entries must not leak into the sum.
    return torch.where(pos | neg, ce, ce.new_zeros(())).sum()


def _focal_weight(logpt: Tensor, gamma: float) -> Tensor:
    return (1 - logpt.exp()) ** gamma


def focal_conf_loss(conf: Tensor, conf_t: Tensor, alpha: float, gamma: float) -> Tensor:
    """Softmax focal loss (Lin et al. 2017) over all non-neutral anchors. As in the original,
    background gets weight 1 - alpha and every foreground class alpha."""
    keep = conf_t >= 0
    target = conf_t.clamp(min=0)
    logpt = F.log_softmax(conf, dim=-1).gather(-1, target[..., None]).squeeze(-1)
    at = torch.where(target == 0, 1 - alpha, alpha)
    loss = -at * _focal_weight(logpt, gamma) * logpt
    return torch.where(keep, loss, loss.new_zeros(())).sum()


def focal_conf_sigmoid_loss(conf: Tensor, conf_t: Tensor, alpha: float, gamma: float) -> Tensor:
    """Sigmoid focal loss as in RetinaNet, one binary problem per foreground class. The background
    logit conf[..., 0] is predicted but unused."""
    keep = conf_t >= 0
    one_hot = F.one_hot(conf_t.clamp(min=0), conf.size(-1)).to(conf.dtype)
    logpt = F.logsigmoid(conf * (2 * one_hot - 1))  # log sigmoid(x) for the true class, log sigmoid(-x) else
    at = alpha * one_hot + (1 - alpha) * (1 - one_hot)
    at[..., 0] = 0
    loss = (-at * _focal_weight(logpt, gamma) * logpt).sum(dim=-1)
    return torch.where(keep, loss, loss.new_zeros(())).sum()


def _positive_class_ce(conf: Tensor, conf_t: Tensor) -> Tensor:
    """Cross-entropy over the foreground logits conf[..., 1:] on positive anchors only."""
    pos = conf_t > 0
    ce = F.cross_entropy(conf[..., 1:].flatten(0, 1), (conf_t - 1).clamp(min=0).flatten(),
                         reduction='none').view_as(conf_t)
    return torch.where(pos, ce, ce.new_zeros(())).sum()


def focal_conf_objectness_loss(conf: Tensor, conf_t: Tensor, alpha: float, gamma: float) -> Tensor:
    """conf[..., 0] is an objectness logit trained with sigmoid focal loss on every non-neutral
    anchor; conf[..., 1:] is a softmax over classes trained on positives only."""
    keep = conf_t >= 0
    background = conf_t <= 0
    obj = conf[..., 0]
    logpt = torch.where(background, F.logsigmoid(-obj), F.logsigmoid(obj))
    at = torch.where(background, 1 - alpha, alpha)
    obj_loss = -at * _focal_weight(logpt, gamma) * logpt
    return _positive_class_ce(conf, conf_t) + torch.where(keep, obj_loss, obj_loss.new_zeros(())).sum()


def conf_objectness_loss(conf: Tensor, conf_t: Tensor, loc: Tensor, loc_t: Tensor,
                         priors: Tensor) -> Tensor:
    """YOLO-style objectness: conf[..., 0] is trained towards the IoU of the predicted box with its
    gt on positives and towards 0 on background; conf[..., 1:] is a softmax over classes on
    positives. loc, loc_t (Tensor[B, P, 4]) encoded boxes, priors (Tensor[P, 4]) (cx, cy, w, h)."""
    pos = conf_t > 0
    obj = conf[..., 0]
    with torch.no_grad():
        pred_boxes = decode(loc, priors).flatten(0, 1)
        gt_boxes = decode(loc_t, priors).flatten(0, 1)
        iou = elemwise_box_iou(pred_boxes, gt_boxes).view_as(obj)
    pos_loss = -iou * F.logsigmoid(obj) - (1 - iou) * F.logsigmoid(-obj)
    neg_loss = -F.logsigmoid(-obj)
    zero = obj.new_zeros(())
    obj_loss = torch.where(pos, pos_loss, zero).sum() + torch.where(conf_t == 0, neg_loss, zero).sum()
    return _positive_class_ce(conf, conf_t) + obj_loss


# ----------------------------------------------------------------------------------------------
# Helpers for the mask terms
# ----------------------------------------------------------------------------------------------

def downsample_masks(masks: Tensor, size: Tuple[int, int], dtype: torch.dtype) -> Tensor:
    """Bilinearly resize gt masks (Tensor[G, H, W], any dtype) to Tensor[G, h, w] of `dtype`."""
    if masks.size(0) == 0:
        return masks.new_zeros((0, *size), dtype=dtype)
    return F.interpolate(masks[None].to(dtype), size, mode='bilinear', align_corners=False)[0]


def coeff_diversity_loss(coeffs: Tensor, instance_t: Tensor) -> Tensor:
    """Push coefficients of anchors on the same instance together and of different instances apart.

    coeffs (Tensor[n, k]), instance_t (Tensor[n]) gt index of each anchor. Returns the summed
    cosine distance / similarity (rescaled to [0, 1]) over all n x n pairs, divided by n.
    """
    unit = F.normalize(coeffs, dim=1)
    sim = (unit @ unit.t() + 1) / 2
    same = instance_t[:, None] == instance_t[None, :]
    return torch.where(same, 1 - sim, sim).sum() / coeffs.size(0)


def _split_crowds(target: Tensor, masks: Tensor, num_crowd: int
                  ) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    """Crowd annotations come last in each image's target. Returns non-crowd boxes, labels and
    masks, and the crowd boxes (None if there are none). New views only; inputs are untouched."""
    num_crowd = int(num_crowd)
    num_obj = target.size(0) - num_crowd
    if num_crowd < 0 or num_obj < 0:
        raise ValueError(f"num_crowds must be between 0 and the number of targets ({target.size(0)}), "
                         f"got {num_crowd}")
    boxes, labels = target[:, :4], target[:, 4].long()
    crowd_boxes = boxes[num_obj:] if num_crowd > 0 else None
    return boxes[:num_obj], labels[:num_obj], crowd_boxes, masks[:num_obj]


class MultiBoxLoss(nn.Module):
    """YOLACT's loss: anchor matching, then the terms listed in the module docstring.

    Args:
        num_classes: number of classes including background (cfg.num_classes).
        pos_threshold: anchors with IoU >= this are positive (cfg.positive_iou_threshold).
        neg_threshold: anchors with IoU < this are background (cfg.negative_iou_threshold);
            anchors in between are neutral.
        negpos_ratio: hard negatives per positive for OHEM (cfg.ohem_negpos_ratio).
        config: the remaining switches and weights (e.g. what `set_cfg` returns; default: the
            active cfg, as the original's four-argument call), read here once.
    """

    def __init__(self, num_classes: int, pos_threshold: float, neg_threshold: float,
                 negpos_ratio: float, *, config: Optional[Config] = None):
        super().__init__()
        self.num_classes = num_classes
        self.pos_threshold = pos_threshold
        self.neg_threshold = neg_threshold
        self.negpos_ratio = negpos_ratio
        self.opts = LossOptions.from_config(own_config(config))

    def forward(self, net: nn.Module, predictions: Dict[str, Tensor], targets: Sequence[Tensor],
                masks: Sequence[Tensor], num_crowds: Sequence[int]) -> Dict[str, Tensor]:
        """Compute the loss terms.

        Args:
            net: the network; only net.maskiou_net is used (cfg.use_maskiou).
            predictions: dict with
                'loc' (Tensor[B, P, 4]) encoded box offsets, 'conf' (Tensor[B, P, C]) logits,
                'mask' (Tensor[B, P, k]) mask coefficients, 'priors' (Tensor[P, 4]) in (cx, cy, w, h),
                'proto' (Tensor[B, h, w, k]) prototypes,
                'segm' (Tensor[B, C-1, hs, ws]) if cfg.use_semantic_segmentation_loss,
                'classes' (Tensor[B, C-1]) if cfg.use_class_existence_loss.
            targets: per image Tensor[G, 5]: relative (x1, y1, x2, y2) and a 0-based class label.
                The last num_crowds[i] rows of image i are crowd annotations.
            masks: per image Tensor[G, H, W] gt masks in {0, 1} (any dtype), rows as in targets.
            num_crowds: per image number of crowd annotations.
        Returns:
            dict of scalar loss terms (see the module docstring). Inputs are not modified.
        """
        opts = self.opts
        loc, conf = predictions['loc'], predictions['conf']
        priors = predictions['priors'].detach()
        batch_size = loc.size(0)
        if not (len(targets) == len(masks) == len(num_crowds) == batch_size):
            raise ValueError(f"expected {batch_size} targets, masks and num_crowds, got "
                             f"{len(targets)}, {len(masks)} and {len(num_crowds)}")

        per_image = [_split_crowds(t.detach(), m, n) for t, m, n in zip(targets, masks, num_crowds)]
        truths = [p[0] for p in per_image]
        labels = [p[1] for p in per_image]
        gt_masks = [p[3] for p in per_image]

        loc_t, conf_t, idx_t, gt_box_t = self._match(truths, labels, [p[2] for p in per_image], priors)
        pos = conf_t > 0
        losses: Dict[str, Tensor] = {}

        box_loss = F.smooth_l1_loss(loc, loc_t, reduction='none').sum(dim=-1)
        losses['B'] = torch.where(pos, box_loss, box_loss.new_zeros(())).sum() * opts.bbox_alpha

        proto = predictions['proto']
        mask_terms, maskiou_batch = self._lincomb_mask_loss(
            pos, idx_t, gt_box_t, predictions['mask'], proto, gt_masks, labels)
        losses.update(mask_terms)
        if opts.mask_proto_loss == 'l1':
            losses['P'] = proto.abs().mean() / L1_EXPECTED_AREA * L1_ALPHA
        elif opts.mask_proto_loss == 'disj':
            losses['P'] = -F.log_softmax(proto, dim=-1).max(dim=-1)[0].mean()

        losses['C'] = opts.conf_alpha * self._conf_loss(conf, conf_t, loc, loc_t, priors)

        if maskiou_batch is not None:
            losses['I'] = self._mask_iou_loss(net, *maskiou_batch)
        if opts.use_class_existence_loss:
            # Crowd labels count here: a crowd of people still means a person is present.
            all_labels = [t[:, 4].long() for t in targets]
            losses['E'] = self._class_existence_loss(predictions['classes'], all_labels)
        if opts.use_semantic_segmentation_loss:
            losses['S'] = self._semantic_segmentation_loss(predictions['segm'], gt_masks, labels)

        # Anchor-based terms are averaged over positives, the others over images. The clamp only
        # matters for a batch without a single non-crowd object.
        num_pos = pos.sum().to(loc.dtype).clamp(min=1)
        return {k: v / (batch_size if k in ('P', 'E', 'S') else num_pos) for k, v in losses.items()}

    # ------------------------------------------------------------------------------------------

    def _match(self, truths: List[Tensor], labels: List[Tensor], crowds: List[Optional[Tensor]],
               priors: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per image box matching. Returns loc_t, gt_box_t (Tensor[B, P, 4]), conf_t, idx_t (Tensor[B, P])."""
        loc_t, conf_t, idx_t, gt_box_t = [], [], [], []
        for boxes, lab, crowd in zip(truths, labels, crowds):
            loc_i, conf_i, idx_i = match(self.pos_threshold, self.neg_threshold, boxes.to(priors.dtype),
                                         priors, lab, crowd, self.opts.crowd_iou_threshold)
            loc_t.append(loc_i)
            conf_t.append(conf_i)
            idx_t.append(idx_i)
            gt_box_t.append(boxes.to(priors.dtype)[idx_i] if boxes.size(0) > 0 else torch.zeros_like(priors))
        return torch.stack(loc_t), torch.stack(conf_t), torch.stack(idx_t), torch.stack(gt_box_t)

    def _conf_loss(self, conf: Tensor, conf_t: Tensor, loc: Tensor, loc_t: Tensor,
                   priors: Tensor) -> Tensor:
        opts = self.opts
        if opts.use_focal_loss:
            if opts.use_sigmoid_focal_loss:
                return focal_conf_sigmoid_loss(conf, conf_t, opts.focal_loss_alpha, opts.focal_loss_gamma)
            if opts.use_objectness_score:
                return focal_conf_objectness_loss(conf, conf_t, opts.focal_loss_alpha, opts.focal_loss_gamma)
            return focal_conf_loss(conf, conf_t, opts.focal_loss_alpha, opts.focal_loss_gamma)
        if opts.use_objectness_score:
            return conf_objectness_loss(conf, conf_t, loc, loc_t, priors)
        return ohem_conf_loss(conf, conf_t, self.negpos_ratio)

    def _lincomb_mask_loss(self, pos: Tensor, idx_t: Tensor, gt_box_t: Tensor, coeffs: Tensor,
                           proto: Tensor, gt_masks: List[Tensor], labels: List[Tensor]
                           ) -> Tuple[Dict[str, Tensor], Optional[Tuple[Tensor, Tensor, Tensor]]]:
        """Mask loss 'M' (and 'D'), plus the inputs of the mask-IoU head when cfg.use_maskiou.

        pos, idx_t (Tensor[B, P]); gt_box_t (Tensor[B, P, 4]) matched gt box per anchor in relative
        (x1, y1, x2, y2); coeffs (Tensor[B, P, k]); proto (Tensor[B, h, w, k]).
        """
        opts = self.opts
        mask_h, mask_w = proto.shape[1:3]
        loss_m = proto.new_zeros(())
        loss_d = proto.new_zeros(())
        iou_inputs, iou_targets, iou_labels = [], [], []

        for b in range(proto.size(0)):
            sel = pos[b].nonzero(as_tuple=True)[0]
            num_all = sel.numel()
            if num_all == 0:
                continue
            if opts.coeff_diversity_loss:
                loss_d = loss_d + coeff_diversity_loss(coeffs[b, sel], idx_t[b, sel])
            # Masks are full-image sized, so only a random subset of positives is trained; the
            # loss is scaled back up so its expectation does not change.
            if num_all > opts.masks_to_train:
                sel = sel[torch.randperm(num_all, device=sel.device)[:opts.masks_to_train]]
            num = sel.numel()
            gt_idx = idx_t[b, sel]
            boxes = gt_box_t[b, sel]

            with torch.no_grad():
                gt = downsample_masks(gt_masks[b], (mask_h, mask_w), proto.dtype)
                if opts.mask_proto_binarize_downsampled_gt:
                    gt = gt.gt(0.5).to(proto.dtype)
                mask_t = gt.permute(1, 2, 0)[:, :, gt_idx]  # [h, w, num]

            pred = opts.mask_activation(proto[b] @ coeffs[b, sel].t())  # [h, w, num]
            if opts.mask_proto_crop:
                pred = crop(pred, boxes)

            if opts.mask_activation is activation_func.sigmoid:
                pixel_loss = F.binary_cross_entropy(pred.clamp(0, 1), mask_t, reduction='none')
            else:
                pixel_loss = F.smooth_l1_loss(pred, mask_t, reduction='none')

            if opts.mask_proto_normalize_emulate_roi_pooling:
                # Emulate ROI pooling: every instance weighs the same whatever its size, so the
                # per-mask sum is divided by the box area in prototype pixels.
                weight = mask_h * mask_w if opts.mask_proto_crop else 1
                box_wh = center_size(boxes)[:, 2:]
                per_mask = pixel_loss.sum(dim=(0, 1)) / (box_wh[:, 0] * mask_w) / (box_wh[:, 1] * mask_h) * weight
            else:
                per_mask = pixel_loss.sum(dim=(0, 1))
            if num_all > num:
                per_mask = per_mask * (num_all / num)
            loss_m = loss_m + per_mask.sum()

            if opts.use_maskiou:
                lab = labels[b][gt_idx]
                if opts.discard_mask_area > 0:
                    # Tiny gt masks give a meaningless IoU target; drop them from the IoU head.
                    big = mask_t.sum(dim=(0, 1)) > opts.discard_mask_area
                    pred, mask_t, lab = pred[:, :, big], mask_t[:, :, big], lab[big]
                    if lab.numel() == 0:
                        continue
                iou_inputs.append(pred.permute(2, 0, 1)[:, None])
                with torch.no_grad():
                    iou_targets.append(elemwise_mask_iou(pred.gt(0.5).to(pred.dtype), mask_t))
                iou_labels.append(lab)

        terms = {'M': loss_m * opts.mask_alpha / mask_h / mask_w}
        if opts.coeff_diversity_loss:
            terms['D'] = loss_d * opts.coeff_diversity_alpha

        if not iou_inputs:
            return terms, None
        maskiou_batch = (torch.cat(iou_inputs), torch.cat(iou_targets), torch.cat(iou_labels))
        num_samples = maskiou_batch[1].numel()
        if 0 < opts.maskious_to_train < num_samples:
            keep = torch.randperm(num_samples, device=maskiou_batch[1].device)[:opts.maskious_to_train]
            maskiou_batch = tuple(x[keep] for x in maskiou_batch)
        return terms, maskiou_batch

    def _mask_iou_loss(self, net: nn.Module, net_input: Tensor, iou_t: Tensor, label_t: Tensor) -> Tensor:
        """Smooth-L1 between the mask-IoU head's prediction for the gt class and the actual IoU.
        net_input (Tensor[n, 1, h, w]) predicted masks, iou_t (Tensor[n]), label_t (Tensor[n]) 0-based."""
        pred = net.maskiou_net(net_input).gather(1, label_t[:, None]).squeeze(1)
        return F.smooth_l1_loss(pred, iou_t, reduction='sum') * self.opts.maskiou_alpha

    def _class_existence_loss(self, class_logits: Tensor, labels: List[Tensor]) -> Tensor:
        """BCE between per-image class logits (Tensor[B, C-1]) and which classes have any gt."""
        present = torch.zeros_like(class_logits)
        for b, lab in enumerate(labels):
            present[b, lab] = 1
        loss = F.binary_cross_entropy_with_logits(class_logits, present, reduction='sum')
        return loss * self.opts.class_existence_alpha

    def _semantic_segmentation_loss(self, segm: Tensor, gt_masks: List[Tensor], labels: List[Tensor]) -> Tensor:
        """Per-pixel, per-class BCE against the union of the non-crowd gt masks of each class,
        on the low-resolution map segm (Tensor[B, C-1, hs, ws])."""
        seg_h, seg_w = segm.shape[2:]
        with torch.no_grad():
            seg_t = torch.zeros_like(segm)
            for b, (m, lab) in enumerate(zip(gt_masks, labels)):
                if lab.numel() == 0:
                    continue
                down = downsample_masks(m, (seg_h, seg_w), segm.dtype).gt(0.5).to(segm.dtype)
                # Union per class: the masks are binary, so a clamped sum is the max.
                seg_t[b].index_add_(0, lab, down).clamp_(max=1)
        loss = F.binary_cross_entropy_with_logits(segm, seg_t, reduction='sum')
        return loss / seg_h / seg_w * self.opts.semantic_segmentation_alpha
