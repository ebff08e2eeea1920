"""Backbones of YOLACT: ResNet (optionally with DCNv2 stages, for YOLACT++), DarkNet-53 and VGG-16.

Each backbone returns one feature map per stage (`forward` -> tuple of Tensors) and lists the
channels of those maps in `channels`. Module and parameter names follow the original repository
so that its checkpoints (and its pretrained backbone files) load unchanged.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torchvision.ops import deform_conv2d


class DCN(nn.Module):
    """Modulated deformable 3x3 convolution (DCNv2) on `torchvision.ops.deform_conv2d`.

    Parameter names and layout are those of the DCNv2 extension the original compiled
    (`weight`, `bias`, `conv_offset_mask`), so YOLACT++ checkpoints load as they are: the offset
    conv predicts 2*k*k offsets followed by k*k modulation logits.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, deformable_groups: int = 1):
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        taps = deformable_groups * kernel_size * kernel_size
        self.conv_offset_mask = nn.Conv2d(in_channels, 3 * taps, kernel_size, stride=stride,
                                          padding=padding, bias=True)
        bound = 1.0 / (in_channels * kernel_size * kernel_size) ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)
        # Zero offsets and 0.5 modulation: starts as a plain (halved) convolution.
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset_y_x_1, offset_y_x_2, modulation = torch.chunk(self.conv_offset_mask(x), 3, dim=1)
        offset = torch.cat((offset_y_x_1, offset_y_x_2), dim=1)
        mask = torch.sigmoid(modulation)
        if x.device.type == 'cpu' and torch.is_autocast_enabled('cpu'):
            # torchvision has no bf16/fp16 CPU kernel for it and CPU autocast does not upcast it.
            with torch.autocast('cpu', enabled=False):
                return deform_conv2d(x.float(), offset.float(), self.weight, self.bias, stride=self.stride,
                                     padding=self.padding, dilation=self.dilation, mask=mask.float())
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride,
                             padding=self.padding, dilation=self.dilation, mask=mask)


# Run a convolution followed by a frozen (eval-mode) BatchNorm as one convolution with the norm
# folded into its weights and bias. Same result up to float rounding, one pass over the activations
# less (forward and backward), and no normalised copy kept for backward. Module structure and
# state_dict are untouched: the folding happens on the fly. Off: the plain conv -> BN path.
FOLD_FROZEN_BN = True


def conv_bn(conv: nn.Module, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """bn(conv(x)), computed as one convolution when `bn` is a frozen nn.BatchNorm2d.

    A BatchNorm in eval mode is the per-channel affine map y = x * s + (beta - mean * s) with
    s = gamma / sqrt(running_var + eps); folded into the conv it becomes weight * s and a bias.
    Gradients still reach the conv weights (and gamma/beta if they require grad) through s.
    """
    if (not FOLD_FROZEN_BN or bn.training or type(conv) is not nn.Conv2d
            or type(bn) is not nn.BatchNorm2d or bn.running_var is None or bn.weight is None):
        return bn(conv(x))
    cached = _low_precision_inference_params(conv, bn, x.device.type)
    weight, bias = cached if cached is not None else _folded_params(conv, bn)
    return conv._conv_forward(x, weight, bias)


def _folded_params(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """(weight, bias) of the convolution equal to bn(conv(x)) with bn in eval mode."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.reshape(-1, 1, 1, 1), bias


def _low_precision_inference_params(conv: nn.Conv2d, bn: nn.BatchNorm2d, device_type: str):
    """Folded (weight, bias) already in the autocast dtype, kept on `conv` between calls; or None.

    Only for inference under autocast (no grad): there autocast would otherwise fold and cast the
    fp32 weights again on every call, a pass over all backbone weights per image. The values are
    exactly what autocast computes. The copy costs half the fp32 weights' memory and is rebuilt
    when a weight or BatchNorm tensor changes (in-place updates bump their version), moves or
    changes layout. In fp32 nothing is kept: that would cost as much memory as the weights.
    """
    if (torch.compiler.is_compiling() or torch.is_grad_enabled()
            or not torch.is_autocast_enabled(device_type)):
        return None  # (a compiled network folds and casts the weights once itself)
    dtype = torch.get_autocast_dtype(device_type)
    weight = conv.weight
    if weight.dtype == dtype:
        return None
    tensors = (weight, bn.weight, bn.bias, bn.running_mean, bn.running_var, conv.bias)
    key = (dtype, weight.device, weight.stride(),
           tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors))
    cached = getattr(conv, '_low_precision_folded', None)
    if cached is None or cached[0] != key:
        folded_weight, folded_bias = _folded_params(conv, bn)
        cached = (key, folded_weight.to(dtype), folded_bias.to(dtype))
        conv._low_precision_folded = cached
    return cached[1], cached[2]


def _conv_bn_sequential(module: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """module(x) for a ResNet shortcut; folded when it is the usual Sequential(conv, bn)."""
    if isinstance(module, nn.Sequential) and len(module) == 2:
        return conv_bn(module[0], module[1], x)
    return module(x)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1) with the stride on the 3x3, as torchvision's."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, norm_layer=nn.BatchNorm2d,
                 dilation: int = 1, use_dcn: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False, dilation=dilation)
        self.bn1 = norm_layer(planes)
        if use_dcn:
            self.conv2 = DCN(planes, planes, kernel_size=3, stride=stride, padding=dilation,
                             dilation=dilation)
        else:
            self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=dilation,
                                   bias=False, dilation=dilation)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False, dilation=dilation)
        self.bn3 = norm_layer(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(conv_bn(self.conv1, self.bn1, x))
        out = self.relu(conv_bn(self.conv2, self.bn2, out))
        out = conv_bn(self.conv3, self.bn3, out)
        shortcut = x if self.downsample is None else _conv_bn_sequential(self.downsample, x)
        return self.relu(out + shortcut)


class BasicBlock(nn.Module):
    """ResNet-18/34 block (two 3x3 convs), named as torchvision's so its weights load."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, norm_layer=nn.BatchNorm2d,
                 dilation: int = 1, use_dcn: bool = False):
        super().__init__()
        if use_dcn:
            raise ValueError('deformable convolutions are only supported in Bottleneck ResNets')
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, bias=False,
                               dilation=dilation)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, bias=False, dilation=dilation)
        self.bn2 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(conv_bn(self.conv1, self.bn1, x))
        out = conv_bn(self.conv2, self.bn2, out)
        shortcut = x if self.downsample is None else _conv_bn_sequential(self.downsample, x)
        return self.relu(out + shortcut)


def _torchvision_resnet_keys(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename torchvision-style 'layer1.0.conv1.weight' to this backbone's 'layers.0.0.conv1.weight'.

    resnet101_reducedfc.pth and resnet50-19c8e357.pth use torchvision's names, so one rule covers
    the original's backbone files and any torchvision ImageNet ResNet state_dict.
    """
    renamed = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith('layer') and key[5].isdigit():
            key = f'layers.{int(key[5]) - 1}{key[6:]}'
        renamed[key] = value
    return renamed


def _load_partial(module: nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> List[str]:
    """Load the tensors of `state_dict` that `module` has; return the module's keys left untouched.

    Fails when nothing matches (the file is for another network) or when a matching name has
    another shape.
    """
    own = module.state_dict()
    usable = {k: v for k, v in state_dict.items() if k in own}
    if not usable:
        raise ValueError(f"{source}: none of its {len(state_dict)} tensors match this backbone "
                         f"({type(module).__name__}); is it the right file?")
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in usable.items()
           if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{source}: shape mismatch for {len(bad)} tensors, e.g. {bad[0]}")
    module.load_state_dict(usable, strict=False)
    return [k for k in own if k not in usable]


class ResNetBackbone(nn.Module):
    """ResNet feature extractor, optionally with DCNv2 in the last blocks of each stage.

    Args:
        layers: blocks per stage, e.g. [3, 4, 23, 3] for ResNet-101.
        dcn_layers: per stage, how many of the last blocks use deformable convs.
        dcn_interval: of those, only every `dcn_interval`-th block (counted from the stage start).
        atrous_layers: stage indices that dilate instead of striding.
        block: Bottleneck (ResNet-50/101) or BasicBlock (ResNet-18/34).
        width: channels of the stem and the first stage (the later stages double it); 64 is the
            standard ResNet and the only width pretrained weights exist for.
    """

    def __init__(self, layers: Sequence[int], dcn_layers: Sequence[int] = (0, 0, 0, 0),
                 dcn_interval: int = 1, atrous_layers: Sequence[int] = (), block=Bottleneck,
                 width: int = 64, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.num_base_layers = len(layers)
        self.layers = nn.ModuleList()
        self.channels: List[int] = []
        self.norm_layer = norm_layer
        self.dilation = 1
        self.atrous_layers = list(atrous_layers)
        self.block = block
        self.inplanes = width

        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        for stage, (planes, blocks) in enumerate(zip((width, 2 * width, 4 * width, 8 * width), layers)):
            self._make_layer(block, planes, blocks, stride=1 if stage == 0 else 2,
                             dcn_layers=dcn_layers[stage], dcn_interval=dcn_interval)
        # Convs that init_weights must leave alone (they come pretrained).
        self.backbone_modules = [m for m in self.modules() if isinstance(m, (nn.Conv2d, DCN))]

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dcn_layers: int = 0,
                    dcn_interval: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            if len(self.layers) in self.atrous_layers:
                self.dilation += 1
                stride = 1
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride,
                          bias=False, dilation=self.dilation),
                self.norm_layer(planes * block.expansion),
            )
        stage = []
        for i in range(blocks):
            # The last `dcn_layers` blocks may be deformable, thinned by dcn_interval (the first
            # block of a stage is exempt from the interval rule, as in the published models).
            use_dcn = (i + dcn_layers) >= blocks and (i == 0 or i % dcn_interval == 0)
            if i == 0:
                stage.append(block(self.inplanes, planes, stride, downsample, self.norm_layer,
                                   self.dilation, use_dcn=use_dcn))
                self.inplanes = planes * block.expansion
            else:
                stage.append(block(self.inplanes, planes, norm_layer=self.norm_layer,
                                   use_dcn=use_dcn))
        layer = nn.Sequential(*stage)
        self.channels.append(planes * block.expansion)
        self.layers.append(layer)
        return layer

    def forward(self, x: torch.Tensor):
        x = self.maxpool(self.relu(conv_bn(self.conv1, self.bn1, x)))
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return tuple(outs)

    def init_backbone(self, state_dict: Dict[str, torch.Tensor], source: str = 'backbone weights') -> List[str]:
        """Load ImageNet weights: the original's file or a torchvision ResNet state_dict."""
        return _load_partial(self, _torchvision_resnet_keys(state_dict), source)

    def add_layer(self, conv_channels: int = 1024, downsample: int = 2, depth: int = 1, block=None):
        """Append an extra strided stage (SSD-style), for configs selecting layers past the last."""
        block = block or self.block
        self._make_layer(block, conv_channels // block.expansion, blocks=depth, stride=downsample)


def darknetconvlayer(in_channels: int, out_channels: int, *args, **kwargs) -> nn.Sequential:
    """Conv (no bias), BatchNorm, LeakyReLU(0.1): DarkNet's basic unit."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, *args, **kwargs, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(0.1, inplace=True),
    )


class DarkNetBlock(nn.Module):
    """Residual block of DarkNet-53: 1x1 down to `channels`, 3x3 back up to 2*channels."""
    expansion = 2

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.conv1 = darknetconvlayer(in_channels, channels, kernel_size=1)
        self.conv2 = darknetconvlayer(channels, channels * self.expansion, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + x


class DarkNetBackbone(nn.Module):
    """DarkNet-53 of YOLOv3, each stage a strided conv followed by residual blocks."""

    def __init__(self, layers: Sequence[int] = (1, 2, 8, 8, 4), block=DarkNetBlock):
        super().__init__()
        self.num_base_layers = len(layers)
        self.layers = nn.ModuleList()
        self.channels: List[int] = []
        self._preconv = darknetconvlayer(3, 32, kernel_size=3, padding=1)
        self.in_channels = 32
        for channels, blocks in zip((32, 64, 128, 256, 512), layers):
            self._make_layer(block, channels, blocks)
        self.backbone_modules = [m for m in self.modules() if isinstance(m, nn.Conv2d)]

    def _make_layer(self, block, channels: int, num_blocks: int, stride: int = 2) -> None:
        stage = [darknetconvlayer(self.in_channels, channels * block.expansion, kernel_size=3,
                                  padding=1, stride=stride)]
        self.in_channels = channels * block.expansion
        stage += [block(self.in_channels, channels) for _ in range(num_blocks)]
        self.channels.append(self.in_channels)
        self.layers.append(nn.Sequential(*stage))

    def forward(self, x: torch.Tensor):
        x = self._preconv(x)
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return tuple(outs)

    def add_layer(self, conv_channels: int = 1024, stride: int = 2, depth: int = 1,
                  block=DarkNetBlock) -> None:
        self._make_layer(block, conv_channels // block.expansion, num_blocks=depth, stride=stride)

    def init_backbone(self, state_dict: Dict[str, torch.Tensor], source: str = 'backbone weights') -> List[str]:
        """darknet53.pth (made by the original's scripts/convert_darknet.py) uses our names."""
        return _load_partial(self, state_dict, source)


class VGGBackbone(nn.Module):
    """VGG built from a layer description (see `vgg16_arch` in data/config.py).

    Args:
        cfg: list of stages; each a list of 'M' (max pool), an int (3x3 conv + ReLU with that
            many channels) or a ('M' or int, kwargs) tuple.
        extra_args: (conv_channels, downsample) for each layer added by `add_layer`.
        norm_layers: stage indices whose output goes through a BatchNorm.
    """

    def __init__(self, cfg, extra_args=(), norm_layers=()):
        super().__init__()
        self.channels: List[int] = []
        self.layers = nn.ModuleList()
        self.in_channels = 3
        self.extra_args = list(reversed(list(extra_args)))  # popped from the end
        self.total_layer_count = 0
        # flat torchvision index ('features.N') -> our 'stage.position'
        self.state_dict_lookup: Dict[int, str] = {}
        for stage_cfg in cfg:
            self._make_layer(stage_cfg)
        self.norms = nn.ModuleList([nn.BatchNorm2d(self.channels[l]) for l in norm_layers])
        self.norm_lookup = {l: idx for idx, l in enumerate(norm_layers)}
        self.backbone_modules = [m for m in self.modules() if isinstance(m, nn.Conv2d)]

    def _make_layer(self, stage_cfg) -> None:
        modules: List[nn.Module] = []
        for item in stage_cfg:
            kind, kwargs = (item if isinstance(item, tuple) else (item, None))
            if kind == 'M':
                modules.append(nn.MaxPool2d(**(kwargs or {'kernel_size': 2, 'stride': 2})))
            else:
                flat_index = self.total_layer_count + len(modules)
                self.state_dict_lookup[flat_index] = f'{len(self.layers)}.{len(modules)}'
                modules.append(nn.Conv2d(self.in_channels, kind,
                                         **(kwargs or {'kernel_size': 3, 'padding': 1})))
                modules.append(nn.ReLU(inplace=True))
                self.in_channels = kind
        self.total_layer_count += len(modules)
        self.channels.append(self.in_channels)
        self.layers.append(nn.Sequential(*modules))

    def forward(self, x: torch.Tensor):
        outs = []
        for idx, layer in enumerate(self.layers):
            x = layer(x)
            if idx in self.norm_lookup:
                x = self.norms[self.norm_lookup[idx]](x)
            outs.append(x)
        return tuple(outs)

    def transform_key(self, key: str) -> str:
        """'features.24.bias' (torchvision VGG) -> 'layers.4.1.bias'."""
        index, param = key.split('.')[-2:]
        return f'layers.{self.state_dict_lookup[int(index)]}.{param}'

    def init_backbone(self, state_dict: Dict[str, torch.Tensor], source: str = 'backbone weights') -> List[str]:
        renamed = OrderedDict((self.transform_key(k), v) for k, v in state_dict.items()
                              if k.split('.')[-2].isdigit() and int(k.split('.')[-2]) in self.state_dict_lookup)
        return _load_partial(self, renamed, source)

    def add_layer(self, conv_channels: int = 128, downsample: int = 2) -> None:
        if self.extra_args:
            conv_channels, downsample = self.extra_args.pop()
        padding = 1 if downsample > 1 else 0
        layer = nn.Sequential(
            nn.Conv2d(self.in_channels, conv_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(conv_channels, conv_channels * 2, kernel_size=3, stride=downsample,
                      padding=padding),
            nn.ReLU(inplace=True),
        )
        self.in_channels = conv_channels * 2
        self.channels.append(self.in_channels)
        self.layers.append(layer)


def construct_backbone(backbone_cfg) -> nn.Module:
    """Build the backbone a backbone Config describes, with enough stages for its selected_layers."""
    backbone = backbone_cfg.type(*backbone_cfg.args)
    num_layers = max(backbone_cfg.selected_layers) + 1
    while len(backbone.layers) < num_layers:
        backbone.add_layer()
    return backbone
