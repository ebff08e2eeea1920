"""Checkpoint file I/O: the one place that reads and writes .pth files.

Reading always uses `torch.load(weights_only=True)`, so a file crafted to run code when unpickled
is refused. Writing goes through a temporary file and an atomic rename, so a crash or a kill during
a save leaves the previous file intact.
"""
import os
import pickle
import re
import tempfile
import zipfile
from typing import Any, Dict

import torch

from data.config import ConfigError
from utils.functions import SavePath


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe or not what was expected."""


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message, without terminal colour codes (torch adds some)."""
    text = re.sub(r'\x1b\[[0-9;]*m', '', str(err)).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_file(path: str, map_location: Any = 'cpu') -> Any:
    """`torch.load(path, weights_only=True)` with a one-line error naming the file on failure."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses globals outside tensors/containers: code or foreign objects.
        raise CheckpointError(f"{path}: refused to load, it is not a plain tensor file "
                              f"(weights_only=True): {_first_line(err)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or corrupt?): {_first_line(err)}") from None


def load_state_dict_file(path: str, map_location: Any = 'cpu') -> Dict[str, torch.Tensor]:
    """Load a file that must hold a state_dict (a mapping of names to tensors)."""
    obj = load_file(path, map_location)
    # Some training frameworks wrap the weights: {'state_dict': ...} or {'model': ...}.
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for wrapper in ('state_dict', 'model'):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state_dict (expected a dict of tensors, got {type(obj).__name__})")
    return obj


def save_file(obj: Any, path: str) -> None:
    """torch.save to `path` atomically: write a temporary file beside it, fsync, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def config_name_from_checkpoint(path: str) -> str:
    """The config a checkpoint was saved with, read from its name like the original:
    <config>_<epoch>_<iteration>.pth (or ..._interrupt.pth) -> <config>_config."""
    try:
        return SavePath.from_str(path).model_name + '_config'
    except ValueError as err:
        raise ConfigError(f"cannot infer the config: {err} (e.g. yolact_base_54_800000.pth); "
                          f"pass --config") from None
