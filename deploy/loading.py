"""A trained file -> its config and network: a checkpoint (.pth) or a file written by export.py.

    net, config = load_network('weights/yolact_base_54_800000.pth', torch.device('cpu'))

The config is a value of the file's own: a checkpoint's is named by --config or its file name
(<config>_<epoch>_<iteration>.pth) and takes the classes of the <checkpoint>.classes.json beside it;
an exported file's comes from its metadata (deploy/runtime_model.py). predictor.Predictor loads
through `load_network`; eval.py, which changes the config (dataset, --detect) before the network is
built, through its two halves `open_model` and `build_network`; export.py through `open_model`.
"""
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from data.config import Config, ConfigError, config_for, dataset_for, describe_classes
from deploy.inference import InferenceError
from deploy.runtime_model import exported_config, is_exported, load_exported, open_exported
from utils.checkpoint import CheckpointError, config_name_from_checkpoint
from utils.device import ProbeShape, autocast_dtype, prefers_channels_last
from yolact import load_model, use_checkpoint_classes

Say = Optional[Callable[[str], None]]


@dataclass
class ModelFile:
    """A trained file opened, its network not built yet.

    config: the config the network will be built with (change it before `build_network`).
    classes_from_file: the class names are the file's own (its metadata, or the class list beside
    a checkpoint), not the config's.
    session, meta: an exported file's runtime session and metadata; None for a checkpoint.
    """
    path: str
    config: Config
    classes_from_file: bool
    session: Any = None
    meta: Optional[Dict[str, Any]] = None

    @property
    def exported(self) -> bool:
        return self.meta is not None


def _same_config(a: str, b: str) -> bool:
    return a.split('_config')[0] == b.split('_config')[0]


def open_model(path: str, config_name: Optional[str] = None, dataset_name: Optional[str] = None,
               say: Say = None, config_option: str = '--config') -> ModelFile:
    """Open the checkpoint or exported file at `path` and decide its config.

    config_name: a checkpoint's config when its file name does not say it; for an exported file it
    must be the one its metadata names. dataset_name: a dataset of data/config.py whose files are
    used instead of the config's (the classes stay the model's). say: gets a line about each choice.
    config_option: how the caller names `config_name` in messages ('--config', "config='<name>'").
    """
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"model file not found: {path}")
    if is_exported(path):
        session, meta = open_exported(path)
        if config_name is not None and not _same_config(config_name, meta['config']):
            raise ConfigError(f"config {config_name}: {os.path.basename(path)} was exported from "
                              f"{meta['config']}, which its metadata names; give no config")
        config = exported_config(meta)
        if dataset_name is not None:
            config.dataset = dataset_for(dataset_name).copy({'class_names': config.dataset.class_names,
                                                             'label_map': config.dataset.label_map})
        if say is not None:
            say(f"Config {config.name} and {describe_classes(config.dataset.class_names)} from the metadata of "
                f"{os.path.basename(path)}.")
        return ModelFile(path, config, True, session, meta)
    if config_name is None:
        try:
            config_name = config_name_from_checkpoint(path)
        except ConfigError as err:
            raise ConfigError(str(err).replace('pass --config', f'pass {config_option}')) from None
        if say is not None:
            say(f'Config not specified. Parsed {config_name} from the file name.')
    config = config_for(config_name)
    if dataset_name is not None:
        config.dataset = dataset_for(dataset_name)
    return ModelFile(path, config, use_checkpoint_classes(path, config, say=say))


def rename_classes(model: ModelFile, classes: Sequence[str]) -> None:
    """Replace the class names of `model`'s config by `classes`, as many as the model predicts."""
    names = tuple(str(name) for name in classes)
    config = model.config
    if len(names) != config.num_classes - 1:
        raise ConfigError(f"classes=: {len(names)} names given, but {os.path.basename(model.path)} predicts "
                          f"{config.num_classes - 1} classes ({describe_classes(config.dataset.class_names)})")
    config.dataset = config.dataset.copy({'class_names': names})


def build_network(model: ModelFile, device: torch.device, amp: bool = False,
                  amp_dtype: Optional[torch.dtype] = None, verbose: bool = False) -> nn.Module:
    """The network of `model` in eval mode, built with model.config: a Yolact on `device` (channels
    last where its convolutions run faster so, under the autocast `amp` / `amp_dtype` ask for), or
    for an exported file a RuntimeYolact (on the CPU). verbose: print progress lines."""
    if model.exported:
        if amp:
            raise InferenceError(f"amp applies to a .pth checkpoint; {os.path.basename(model.path)} "
                                    f"runs as exported (onnxruntime or TorchScript)")
        return load_exported(model.path, model.session, model.meta, model.config, verbose)
    net = load_model(model.path, device, model.config, verbose)
    dtype = autocast_dtype(device, amp, amp_dtype, notify=None, shape=ProbeShape(size=model.config.max_size))
    if prefers_channels_last(device, dtype is not None):
        net = net.to(memory_format=torch.channels_last)  # same results, faster convs here
    return net


def load_network(path: str, device: torch.device, config_name: Optional[str] = None,
                 classes: Optional[Sequence[str]] = None, amp: bool = False,
                 amp_dtype: Optional[torch.dtype] = None) -> Tuple[nn.Module, Config]:
    """(network in eval mode, its config) of a checkpoint or an exported file, quietly; `classes`
    replaces the file's class names. See `open_model` and `build_network`."""
    model = open_model(path, config_name, config_option="config='<name>'")
    if classes is not None:
        rename_classes(model, classes)
    return build_network(model, device, amp, amp_dtype), model.config
