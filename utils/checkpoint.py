"""Checkpoint file I/O: the one place that reads and writes .pth files (and the class list beside them).

Reading always uses `torch.load(weights_only=True)`, so a file crafted to run code when unpickled
is refused. Writing goes through a temporary file and an atomic rename, so a crash or a kill during
a save leaves the previous file intact.
"""
import json
import os
import pickle
import re
import zipfile
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from data.config import ConfigError
from utils.functions import SavePath, write_atomically


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
    """torch.save to `path` atomically (utils.functions.write_atomically)."""
    write_atomically(path, lambda f: torch.save(obj, f))


def config_name_from_checkpoint(path: str) -> str:
    """The config a checkpoint was saved with, read from its name like the original:
    <config>_<epoch>_<iteration>.pth (or ..._interrupt.pth), and train.py's <config>_best.pth
    -> <config>_config."""
    if SavePath.is_best(path):
        return os.path.basename(path)[:-len(SavePath.BEST_SUFFIX + '.pth')] + '_config'
    try:
        return SavePath.from_str(path).model_name + '_config'
    except ValueError as err:
        raise ConfigError(f"cannot infer the config: {err} (e.g. yolact_base_54_800000.pth); "
                          f"pass --config") from None


# ----------------------------------------------------------------------------- class names

CLASSES_FORMAT = 1


def classes_path(weights_path: str) -> str:
    """The class-list file that goes with a weights file: <stem>.classes.json."""
    stem = weights_path[:-len('.pth')] if weights_path.endswith('.pth') else weights_path
    return stem + '.classes.json'


def write_classes(weights_path: str, config: str, class_names: Sequence[str],
                  label_map: Optional[Dict[int, int]]) -> None:
    """Write the classes a checkpoint predicts beside it, atomically. The .pth stays a plain
    state_dict with the original's keys; the names travel in this JSON file: COCO-style
    categories (id, name) in label order, so eval.py and export.py need no class flags."""
    ids = {label: cat_id for cat_id, label in (label_map or {}).items()}
    categories = [{'id': ids.get(label, label), 'name': name} for label, name in enumerate(class_names, start=1)]
    text = json.dumps({'format': CLASSES_FORMAT, 'config': config, 'categories': categories}, indent=1)
    write_atomically(classes_path(weights_path), lambda f: f.write(text.encode('utf-8') + b'\n'))


def read_classes(weights_path: str) -> Optional[Tuple[Tuple[str, ...], Dict[int, int]]]:
    """(class names, label map category_id -> label) from the file beside `weights_path`, or
    None when there is none (a checkpoint of the original, or one copied without it)."""
    path = classes_path(weights_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            content = json.load(f)
        categories = content['categories']
        names = tuple(str(cat['name']) for cat in categories)
        label_map = {int(cat['id']): label for label, cat in enumerate(categories, start=1)}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: not a class list of this project ({_first_line(err)}); "
                              f"delete it to fall back to the config's classes") from None
    if not names or len(label_map) != len(names):
        raise CheckpointError(f"{path}: no classes, or a category id listed twice")
    return names, label_map
