"""F.interpolate as a module, so resizing can sit inside an nn.Sequential (used by the protonet)."""
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class InterpolateModule(nn.Module):
    """Calls F.interpolate(x, *args, **kwargs) with the arguments given at construction.

    It has no parameters or buffers, so it adds no keys to a state dict.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args = args
        self.kwargs = kwargs

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, *self.args, **self.kwargs)

    def extra_repr(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return ", ".join(parts)
