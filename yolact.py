"""The YOLACT network: backbone, FPN, shared prediction heads, protonet and auxiliary heads.

Module and parameter names follow the original repository exactly, so its published checkpoints
(yolact_base_54_800000.pth, yolact_plus_base_54_800000.pth, ...) load without renaming.
The network keeps a copy of the config it is given (``Yolact(set_cfg('yolact_base'))``, or the
original's ``set_cfg('yolact_base'); Yolact()``, which copies the active `cfg`), so a later
`set_cfg` changes nothing in a network already built; the device of every tensor it creates
follows its parameters (no `.cuda()`), and nothing is TorchScript (ONNX export, torch_npu).
"""
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbone import construct_backbone
from data.config import Config, ConfigError, describe_classes, mask_type, own_config
from layers.functions.detection import Detect
from layers.interpolate import InterpolateModule
from utils.checkpoint import CheckpointError, classes_path, load_state_dict_file, read_classes, save_file
from utils.device import prefers_channels_last  # noqa: F401  (re-exported: it used to live here)


def make_net(in_channels: int, layer_cfgs: Sequence[tuple], include_last_relu: bool = True,
             norm_groups: int = 0) -> Tuple[nn.Sequential, int]:
    """Build a conv stack from the config's layer list; returns (network, out_channels).

    Each entry is (channels, kernel_size, kwargs): a conv for kernel_size > 0, a transposed conv
    for kernel_size < 0, and a bilinear upsampling by -kernel_size when channels is None. Every
    layer is followed by a ReLU (also the upsampling, which keeps the original's module indices).
    norm_groups > 0 puts a GroupNorm between each conv and its ReLU (not after a last conv without ReLU).
    """
    modules: List[nn.Module] = []
    for i, (num_channels, kernel_size, kwargs) in enumerate(layer_cfgs):
        if kernel_size > 0:
            modules.append(nn.Conv2d(in_channels, num_channels, kernel_size, **kwargs))
            if norm_groups > 0 and (include_last_relu or i < len(layer_cfgs) - 1):
                modules.append(nn.GroupNorm(norm_groups, num_channels))
        elif num_channels is None:
            modules.append(InterpolateModule(scale_factor=-kernel_size, mode='bilinear',
                                             align_corners=False, **kwargs))
        else:
            modules.append(nn.ConvTranspose2d(in_channels, num_channels, -kernel_size, **kwargs))
        modules.append(nn.ReLU(inplace=True))
        in_channels = num_channels if num_channels is not None else in_channels
    if not include_last_relu:
        modules = modules[:-1]
    return nn.Sequential(*modules), in_channels


def make_priors(conv_h: int, conv_w: int, aspect_ratios: Sequence[Sequence[float]],
                scales: Sequence[float], max_size: int, use_pixel_scales: bool,
                preapply_sqrt: bool, use_square_anchors: bool,
                device: Optional[torch.device] = None) -> torch.Tensor:
    """Anchor boxes of one prediction layer.

    Returns:
        priors (Tensor[conv_h * conv_w * A, 4]) in (cx, cy, w, h), relative to the image, ordered
        by row, column, then for each aspect-ratio list, scale and aspect ratio (the order of the
        prediction heads' channels).
    """
    sizes = []
    for ars in aspect_ratios:
        for scale in scales:
            for ar in ars:
                ar = ar if preapply_sqrt else ar ** 0.5
                if use_pixel_scales:
                    w, h = scale * ar / max_size, scale / ar / max_size
                else:
                    w, h = scale * ar / conv_w, scale / ar / conv_h
                sizes.append((w, w if use_square_anchors else h))
    # Computed in float64 and rounded once, as the original's Python floats were.
    wh = torch.tensor(sizes, dtype=torch.float64)
    ys = (torch.arange(conv_h, dtype=torch.float64) + 0.5) / conv_h
    xs = (torch.arange(conv_w, dtype=torch.float64) + 0.5) / conv_w
    cy, cx = torch.meshgrid(ys, xs, indexing='ij')
    centers = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
    priors = torch.cat((centers, wh.unsqueeze(0).expand(centers.size(0), -1, -1)), dim=-1)
    return priors.reshape(-1, 4).to(device=device, dtype=torch.float32)


def priors_per_cell(aspect_ratios: Sequence[Sequence[float]], scales: Sequence[float]) -> int:
    """Anchors per feature-map cell of one prediction head: every scale for every aspect ratio."""
    return sum(len(x) * len(scales) for x in aspect_ratios)


class PredictionModule(nn.Module):
    """Box, class and mask-coefficient head for one FPN level.

    With `parent` set, the module owns no weights and runs its parent's layers (the original
    shares one head across all levels); it still has its own anchors.
    """

    def __init__(self, in_channels: int, out_channels: int = 1024,
                 aspect_ratios: Sequence[Sequence[float]] = ((1,),), scales: Sequence[float] = (1,),
                 parent: Optional['PredictionModule'] = None, index: int = 0, *,
                 config: Config, mask_dim: int):
        super().__init__()
        cfg = config
        self.num_classes = cfg.num_classes
        self.mask_dim = mask_dim
        self.num_priors = priors_per_cell(aspect_ratios, scales)
        self.parent = [parent]  # a list, so the shared parent is not registered twice
        self.index = index
        self.aspect_ratios = aspect_ratios
        self.scales = scales
        self.eval_mask_branch = cfg.eval_mask_branch
        self.coeff_activation = cfg.mask_proto_coeff_activation
        self._prior_args = dict(max_size=cfg.max_size,
                                use_pixel_scales=cfg.backbone.use_pixel_scales,
                                preapply_sqrt=cfg.backbone.preapply_sqrt,
                                use_square_anchors=cfg.backbone.use_square_anchors)

        if parent is None:
            if cfg.extra_head_net is None:
                out_channels = in_channels
            else:
                self.upfeature, out_channels = make_net(in_channels, cfg.extra_head_net,
                                                        norm_groups=cfg.head_norm_groups)
            self.bbox_layer = nn.Conv2d(out_channels, self.num_priors * 4, **cfg.head_layer_params)
            self.conf_layer = nn.Conv2d(out_channels, self.num_priors * self.num_classes,
                                        **cfg.head_layer_params)
            self.mask_layer = nn.Conv2d(out_channels, self.num_priors * self.mask_dim,
                                        **cfg.head_layer_params)
            self.bbox_extra, self.conf_extra, self.mask_extra = [
                self._make_extra(out_channels, n, cfg.head_norm_groups) for n in cfg.extra_layers]

    @staticmethod
    def _make_extra(channels: int, num_layers: int, norm_groups: int) -> nn.Module:
        if num_layers == 0:
            return nn.Identity()
        return make_net(channels, [(channels, 3, {'padding': 1})] * num_layers, norm_groups=norm_groups)[0]

    def priors(self, conv_h: int, conv_w: int, device: torch.device) -> torch.Tensor:
        """Anchors for a conv_h x conv_w feature map (Yolact caches them per input size)."""
        return make_priors(conv_h, conv_w, self.aspect_ratios, self.scales, device=device,
                           **self._prior_args)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor[B, C, H, W]): one FPN level.
        Returns:
            loc (Tensor[B, H*W*A, 4]), conf (Tensor[B, H*W*A, num_classes]),
            mask (Tensor[B, H*W*A, mask_dim]) coefficients. Anchors come from `priors`.
        """
        src = self if self.parent[0] is None else self.parent[0]
        batch = x.size(0)
        if hasattr(src, 'upfeature'):
            x = src.upfeature(x)

        def flat(layer: nn.Module, inp: torch.Tensor, width: int) -> torch.Tensor:
            return layer(inp).permute(0, 2, 3, 1).reshape(batch, -1, width)

        loc = flat(src.bbox_layer, src.bbox_extra(x), 4)
        conf = flat(src.conf_layer, src.conf_extra(x), self.num_classes)
        if self.eval_mask_branch:
            mask = self.coeff_activation(flat(src.mask_layer, src.mask_extra(x), self.mask_dim))
        else:
            mask = loc.new_zeros(batch, loc.size(1), self.mask_dim)
        return {'loc': loc, 'conf': conf, 'mask': mask}


class FPN(nn.Module):
    """Feature pyramid over the selected backbone layers, plus `num_downsample` extra levels.

    Returns the levels from the finest to the coarsest (P3 ... P7 for yolact_base).
    """

    def __init__(self, in_channels: Sequence[int], config: Config):
        super().__init__()
        fpn = config.fpn
        self.lat_layers = nn.ModuleList([nn.Conv2d(c, fpn.num_features, kernel_size=1)
                                         for c in reversed(in_channels)])
        padding = 1 if fpn.pad else 0
        self.pred_layers = nn.ModuleList([
            nn.Conv2d(fpn.num_features, fpn.num_features, kernel_size=3, padding=padding)
            for _ in in_channels])
        if fpn.use_conv_downsample:
            self.downsample_layers = nn.ModuleList([
                nn.Conv2d(fpn.num_features, fpn.num_features, kernel_size=3, padding=1, stride=2)
                for _ in range(fpn.num_downsample)])
        self.interpolation_mode = fpn.interpolation_mode
        self.num_downsample = fpn.num_downsample
        self.use_conv_downsample = fpn.use_conv_downsample
        self.relu_downsample_layers = fpn.relu_downsample_layers
        self.relu_pred_layers = fpn.relu_pred_layers

    def forward(self, convouts: List[torch.Tensor]) -> List[torch.Tensor]:
        num = len(convouts)
        merged: List[Optional[torch.Tensor]] = [None] * num
        top: Optional[torch.Tensor] = None
        # Top-down: lat_layers[0] belongs to the coarsest input.
        for lat_layer, j in zip(self.lat_layers, reversed(range(num))):
            lateral = lat_layer(convouts[j])
            if top is not None:
                top = F.interpolate(top, size=convouts[j].shape[-2:], mode=self.interpolation_mode,
                                    align_corners=False)
                lateral = top + lateral
            top = merged[j] = lateral
        out = []
        for pred_layer, j in zip(self.pred_layers, reversed(range(num))):
            level = pred_layer(merged[j])
            out.insert(0, F.relu(level) if self.relu_pred_layers else level)
        extra = []
        for idx in range(self.num_downsample):
            prev = extra[-1] if extra else out[-1]
            if self.use_conv_downsample:
                extra.append(self.downsample_layers[idx](prev))
            else:
                extra.append(F.max_pool2d(prev, 1, stride=2))
        if self.relu_downsample_layers:
            extra = [F.relu(e) for e in extra]
        return out + extra


class FastMaskIoUNet(nn.Module):
    """YOLACT++ head that predicts, per class, the IoU of a predicted mask with its ground truth."""

    def __init__(self, config: Config):
        super().__init__()
        self.maskiou_net, _ = make_net(1, list(config.maskiou_net) + [(config.num_classes - 1, 1, {})],
                                       include_last_relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[N, 1, H, W]) masks -> Tensor[N, num_classes - 1] predicted IoUs."""
        return torch.amax(self.maskiou_net(x), dim=(2, 3))


class Yolact(nn.Module):
    """YOLACT / YOLACT++ as configured by `config` (e.g. what `set_cfg` returns; default: the active
    `cfg`), of which it keeps a copy as `self.config`; `self.mask_dim` is the number of prototypes,
    from the protonet's last layer.

    In train mode `forward(x)` returns the raw outputs: loc (Tensor[B, P, 4]) box offsets,
    conf (Tensor[B, P, C]) class logits, mask (Tensor[B, P, K]) coefficients, priors
    (Tensor[P, 4]), proto (Tensor[B, h, w, K]) prototypes, and segm (Tensor[B, C-1, h', w'])
    when the semantic segmentation loss is on. In eval mode it returns `Detect`'s detections.
    """

    def __init__(self, config: Optional[Config] = None):
        super().__init__()
        cfg = self.config = own_config(config)
        if cfg.mask_type != mask_type.lincomb:
            raise ConfigError("mask_type.direct is a research option of the original that this port "
                              "does not implement; use mask_type.lincomb")
        self.backbone = construct_backbone(cfg.backbone)
        self.selected_layers = list(cfg.backbone.selected_layers)
        self.proto_src = cfg.mask_proto_src
        self.mask_proto_bias = cfg.mask_proto_bias
        self.prototype_activation = cfg.mask_proto_prototype_activation
        self.eval_mask_branch = cfg.eval_mask_branch
        self.bn_frozen = cfg.freeze_bn

        if self.proto_src is None:
            proto_in = 3
        elif cfg.fpn is not None:
            proto_in = cfg.fpn.num_features
        else:
            proto_in = self.backbone.channels[self.proto_src]
        self.proto_net, self.mask_dim = make_net(proto_in, cfg.mask_proto_net, include_last_relu=False,
                                                 norm_groups=cfg.head_norm_groups)
        if cfg.mask_proto_bias:
            self.mask_dim += 1

        src_channels = self.backbone.channels
        if cfg.use_maskiou:
            self.maskiou_net = FastMaskIoUNet(cfg)

        self.backbone_selected_layers = list(cfg.backbone.selected_layers)
        if cfg.fpn is not None:
            self.fpn = FPN([src_channels[i] for i in self.selected_layers], cfg)
            self.selected_layers = list(range(len(self.selected_layers) + cfg.fpn.num_downsample))
            src_channels = [cfg.fpn.num_features] * len(self.selected_layers)

        self.prediction_layers = nn.ModuleList()
        for idx, layer_idx in enumerate(self.selected_layers):
            parent = self.prediction_layers[0] if cfg.share_prediction_module and idx > 0 else None
            self.prediction_layers.append(PredictionModule(
                src_channels[layer_idx], src_channels[layer_idx],
                aspect_ratios=cfg.backbone.pred_aspect_ratios[idx],
                scales=cfg.backbone.pred_scales[idx], parent=parent, index=idx, config=cfg,
                mask_dim=self.mask_dim))

        if cfg.use_class_existence_loss:
            self.class_existence_fc = nn.Linear(src_channels[-1], cfg.num_classes - 1)
        if cfg.use_semantic_segmentation_loss:
            self.semantic_seg_conv = nn.Conv2d(src_channels[0], cfg.num_classes - 1, kernel_size=1)

        self._priors_cache: Dict[tuple, torch.Tensor] = {}
        self._compiled_network = None
        self._compile_args: Optional[dict] = None
        self.use_focal_loss = cfg.use_focal_loss
        self.use_sigmoid_focal_loss = cfg.use_sigmoid_focal_loss
        self.use_objectness_score = cfg.use_objectness_score
        self.detect = Detect(cfg.num_classes, bkg_label=0, top_k=cfg.nms_top_k,
                             conf_thresh=cfg.nms_conf_thresh, nms_thresh=cfg.nms_thresh,
                             max_num_detections=cfg.max_num_detections, max_size=cfg.max_size)
        if self.bn_frozen:
            self.freeze_bn()

    # ------------------------------------------------------------------ weights

    def save_weights(self, path: str) -> None:
        """Save the state_dict (a plain dict of tensors, loadable by the original code), atomically."""
        save_file(self.state_dict(), path)

    def load_weights(self, path: str) -> None:
        """Load a checkpoint of this config, applying the original's compatibility rules."""
        state_dict = _compatible_keys(load_state_dict_file(path), self.config)
        self._check_compatible(state_dict, path)
        self.load_state_dict(state_dict)
        if self._compile_args is not None:
            # A frozen compiled network holds the old weights as constants.
            self.compile_network(**self._compile_args)

    def load_finetune_weights(self, path: str) -> Tuple[List[str], List[str]]:
        """Start from a checkpoint of another config or class count with the same backbone: every
        tensor whose name and shape match is loaded, the others keep their fresh initialisation
        (call init_weights first). Returns (loaded names, re-initialised names). Raises
        CheckpointError when the backbone differs (nothing would transfer but noise)."""
        state_dict = _compatible_keys(load_state_dict_file(path), self.config)
        own = self.state_dict()
        fits = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
        backbone_keys = [k for k in own if k.startswith('backbone.')]
        # Also the checkpoint's extra ones: a ResNet-101's first blocks have a ResNet-50's shapes.
        differ = [k for k in backbone_keys if k not in fits] + \
            sorted(k for k in state_dict if k.startswith('backbone.') and k not in own)
        if differ:
            raise CheckpointError(
                f"{path} has another backbone than config '{self.config.name}' ({self.config.backbone.name}): {len(differ)} "
                f"backbone tensors are missing, extra or of another shape (e.g. {differ[0]}); "
                f"--finetune needs a checkpoint of the same backbone")
        self.load_state_dict(fits, strict=False)
        return sorted(fits), sorted(k for k in own if k not in fits)

    def _check_compatible(self, state_dict: Dict[str, torch.Tensor], path: str) -> None:
        own = self.state_dict()
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        wrong_shape = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
        if not (missing or unexpected or wrong_shape):
            return
        parts = []
        for label, keys in (('missing', missing), ('unexpected', unexpected), ('wrong shape', wrong_shape)):
            if keys:
                shown = ', '.join(keys[:3]) + (' ...' if len(keys) > 3 else '')
                parts.append(f"{len(keys)} {label} ({shown})")
        raise CheckpointError(f"{path} does not match config '{self.config.name}': " + '; '.join(parts)
                              + ". Pick the config the checkpoint was trained with (--config).")

    def init_weights(self, backbone_path: Optional[str]) -> None:
        """Prepare for training: pretrained backbone (if a path is given), Xavier for the rest."""
        if backbone_path is not None:
            # The backbone is handed its weights: file I/O lives a floor above it (utils/checkpoint.py).
            self.backbone.init_backbone(load_state_dict_file(backbone_path), source=backbone_path)
        backbone_modules = set(map(id, self.backbone.backbone_modules))
        for name, module in self.named_modules():
            if not isinstance(module, nn.Conv2d) or id(module) in backbone_modules:
                continue
            nn.init.xavier_uniform_(module.weight)
            if module.bias is None:
                continue
            if self.config.use_focal_loss and 'conf_layer' in name:
                # Start with background probability 1 - pi, as in the focal loss paper.
                pi = self.config.focal_loss_init_pi
                background_logit = math.log((1 - pi) / pi)
                with torch.no_grad():
                    if self.config.use_sigmoid_focal_loss:
                        module.bias[0] = background_logit
                        module.bias[1:] = -background_logit
                    else:
                        module.bias[0] = background_logit
                        module.bias[1:] = -math.log(module.bias.numel() - 1)
            else:
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ modes

    def train(self, mode: bool = True) -> 'Yolact':
        super().train(mode)
        if self.bn_frozen:
            self.freeze_bn()
        return self

    def freeze_bn(self, enable: bool = False) -> None:
        """enable=False: BatchNorm in eval mode with frozen affine parameters; True: trainable."""
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.train(enable)
                module.weight.requires_grad = enable
                module.bias.requires_grad = enable

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor):
        """x (Tensor[B, 3, H, W]) normalised images (see utils.augmentations.FastBaseTransform)."""
        network = self._compiled_network if self._compiled_network is not None else self.network
        preds = network(x)
        if self.training:
            return preds

        # Box decoding and NMS in float32 even under autocast: fp16/bf16 boxes shift by pixels.
        preds = {k: v.float() for k, v in preds.items()}
        preds['conf'] = self.class_scores(preds['conf'])
        with torch.autocast(x.device.type, enabled=False):
            return self.detect(preds, self)

    def network(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Everything before detection: the raw outputs described in the class docstring (the
        train-only 'classes' and 'segm' only in train mode). `compile_network` compiles this part."""
        outs = self.backbone(x)
        if hasattr(self, 'fpn'):
            outs = self.fpn([outs[i] for i in self.backbone_selected_layers])

        proto = None
        if self.eval_mask_branch:
            proto_x = x if self.proto_src is None else outs[self.proto_src]
            proto = self.prototype_activation(self.proto_net(proto_x))
            proto = proto.permute(0, 2, 3, 1).contiguous()
            if self.mask_proto_bias:
                proto = torch.cat([proto, proto.new_ones(*proto.shape[:-1], 1)], dim=-1)

        levels = [outs[idx] for idx in self.selected_layers]
        per_level = [layer(level) for level, layer in zip(levels, self.prediction_layers)]
        preds = {key: torch.cat([p[key] for p in per_level], dim=-2) for key in per_level[0]}
        preds['priors'] = self.priors([level.shape[-2:] for level in levels], x.device)
        if proto is not None:
            preds['proto'] = proto

        if self.training:
            if hasattr(self, 'class_existence_fc'):
                preds['classes'] = self.class_existence_fc(outs[-1].mean(dim=(2, 3)))
            if hasattr(self, 'semantic_seg_conv'):
                preds['segm'] = self.semantic_seg_conv(outs[0])
        return preds

    def compile_network(self, freeze: bool = True, **compile_kwargs) -> None:
        """torch.compile the network part of forward (backbone to heads; Detect stays eager, its
        output size depends on the data). Opt-in: the first call compiles, which is slow on a small
        CPU; later calls run the compiled code. state_dict keys are unchanged.

        freeze: let Inductor treat the weights as constants in inference (calls without grad):
            batch norm folded into the convolutions, weights pre-packed and, under autocast,
            pre-cast. `load_weights` compiles again so new weights are picked up; after changing
            weights any other way, call this again (either resets torch.compile's caches).
            Training calls (with grad) are not frozen.
        compile_kwargs: passed to torch.compile (mode, dynamic, backend, options, ...).
        """
        if self._compiled_network is not None:
            # A new torch.compile of the same code would reuse the cached graphs, and a frozen
            # graph holds the weights it was traced with (in-place loads keep the tensors it
            # guards on). This clears every compiled graph of the process, not only this net's.
            torch.compiler.reset()
        self._compile_args = dict(compile_kwargs, freeze=freeze)
        compiled = torch.compile(self.network, **compile_kwargs)
        if not (freeze and compile_kwargs.get('backend', 'inductor') == 'inductor'):
            self._compiled_network = compiled
            return

        def frozen_when_no_grad(x: torch.Tensor) -> Dict[str, torch.Tensor]:
            # Dynamo reads this setting while it traces a call (passing it through torch.compile's
            # options reaches only Inductor, too late: the weights were already graph inputs and
            # nothing was folded or packed). Both apply it only to calls without grad.
            with torch._inductor.config.patch(freezing=True):
                return compiled(x)

        self._compiled_network = frozen_when_no_grad

    def priors(self, level_sizes: Sequence[Tuple[int, int]], device: torch.device) -> torch.Tensor:
        """All anchors (Tensor[P, 4], cx cy w h) for the given FPN level sizes, cached."""
        def build() -> torch.Tensor:
            return torch.cat([layer.priors(h, w, device) for layer, (h, w) in zip(self.prediction_layers, level_sizes)])

        if torch.compiler.is_compiling():
            # Traced into the compiled graph as a constant. Filling the cache here would make its
            # contents a guard, and the second call would compile the whole network again.
            return build()
        key = (tuple(tuple(s) for s in level_sizes), device)
        if key not in self._priors_cache:
            self._priors_cache[key] = build()
        return self._priors_cache[key]

    def class_scores(self, conf: torch.Tensor) -> torch.Tensor:
        """Class logits (Tensor[B, P, C]) -> scores as the configured confidence loss defines them."""
        if self.use_focal_loss and self.use_sigmoid_focal_loss:
            return torch.sigmoid(conf)
        if self.use_objectness_score:
            objectness = torch.sigmoid(conf[..., :1])
            fg = F.softmax(conf[..., 1:], dim=-1)
            if self.use_focal_loss:
                return torch.cat([1 - objectness, objectness * fg], dim=-1)
            # The original keeps the raw background logit here and gates classes at 0.10.
            return torch.cat([conf[..., :1], (objectness > 0.10) * fg], dim=-1)
        return F.softmax(conf, dim=-1)


def _compatible_keys(state_dict: Dict[str, torch.Tensor], config: Config) -> Dict[str, torch.Tensor]:
    """The original's compatibility rules for its checkpoints: keys a network of `config` never has go."""
    for key in list(state_dict):
        # Very old checkpoints carry a second copy of the backbone under 'backbone.layerN'.
        if key.startswith('backbone.layer') and not key.startswith('backbone.layers'):
            del state_dict[key]
        # Checkpoints with more extra FPN levels than this config uses.
        elif key.startswith('fpn.downsample_layers.') and config.fpn is not None \
                and int(key.split('.')[2]) >= config.fpn.num_downsample:
            del state_dict[key]
    return state_dict


def num_classes_in_checkpoint(state_dict: Dict[str, torch.Tensor], config: Config) -> Optional[int]:
    """The class count (background included) a state_dict of `config` was trained
    for, read from the first class layer's shape (anchors per cell x classes); None if absent."""
    weight = state_dict.get('prediction_layers.0.conf_layer.weight')
    if weight is None:
        return None
    priors = priors_per_cell(config.backbone.pred_aspect_ratios[0], config.backbone.pred_scales[0])
    return weight.shape[0] // priors if weight.shape[0] % priors == 0 else None


def use_checkpoint_classes(path: str, config: Config, say: Optional[Callable[[str], None]] = print) -> bool:
    """Give `config` (changed in place) the classes of the checkpoint at `path`, before the network is built.

    From the <stem>.classes.json beside it when there is one (train.py writes it). Without it (the
    original's checkpoints) the class count comes from the tensor shapes: the config's names when
    the counts agree, else generic names 'class_1'... Returns True when the names came from the
    file beside the checkpoint.
    """
    found = read_classes(path)
    if found is not None:
        names, label_map = found
        config.dataset = config.dataset.copy({'class_names': names, 'label_map': label_map})
        config.num_classes = len(names) + 1
        if say is not None:
            say(f'Classes from {os.path.basename(classes_path(path))}: {describe_classes(names)}.')
        return True
    count = num_classes_in_checkpoint(load_state_dict_file(path), config)
    if count is None or count == config.num_classes:
        if say is not None:
            say(f'No class list beside {os.path.basename(path)}: the config\'s {describe_classes(config.dataset.class_names)}.')
        return False
    if say is not None:
        say(f'No class list beside {os.path.basename(path)}: its class layers hold {count - 1} classes, '
            f'not the config\'s {config.num_classes - 1}; generic names class_1..class_{count - 1}.')
    config.dataset = config.dataset.copy({'class_names': tuple(f'class_{i}' for i in range(1, count)), 'label_map': None})
    config.num_classes = count
    return False


def load_model(path: str, device: torch.device, config: Config, verbose: bool = True) -> torch.nn.Module:
    """A Yolact of `config` with the checkpoint's weights, in eval mode on
    `device`; verbose: print a progress line (the command-line tools)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if verbose:
        print('Loading model...', end='', flush=True)
    try:
        net = Yolact(config)
        net.load_weights(path)
    except BaseException:
        if verbose:
            print()  # end the progress line before the error is reported
        raise
    net.eval()
    if verbose:
        print(' Done.')
    return net.to(device)
