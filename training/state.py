"""Training checkpoints: the training-state file beside each weights file, writing and tidying
them, and finding the checkpoint a run resumes from.

A checkpoint is `<config>_<epoch>_<iter>.pth` (a plain state_dict, loadable by the original code)
plus `<config>_<epoch>_<iter>.state.pt` (optimizer, LR position, RNG states, data order, AMP
scaler), so a resumed run continues exactly where it stopped, and `<config>_<epoch>_<iter>.classes.json`
(the class names the model predicts, for eval.py and export.py). The state is written first and the
weights last, each atomically: a weights file on disk marks a complete checkpoint.
"""
import math
import os
import random
import zipfile
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from training.distributed import DistInfo, all_gather, broadcast_from_rank0
from utils.checkpoint import CheckpointError, classes_path, load_file, save_file, write_classes
from utils.functions import SavePath

STATE_FORMAT = 1


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, folder gone, ...); earlier ones are intact."""


def state_path(weights_path: str) -> str:
    """The training-state file that goes with a weights file."""
    stem = weights_path[:-len('.pth')] if weights_path.endswith('.pth') else weights_path
    return stem + '.state.pt'


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and random: the RNG states a training state records."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_states(device: torch.device) -> Dict[str, Any]:
    """This process's torch / numpy / python (and CUDA) RNG states, as a training state stores them."""
    np_state = np.random.get_state()
    states: Dict[str, Any] = {
        'torch': torch.get_rng_state(),
        # Only tensors and plain containers survive weights_only loading.
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        'python': random.getstate(),
    }
    if device.type == 'cuda':
        states['cuda'] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states['torch'])
    name, keys, pos, has_gauss, cached = states['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))
    if device.type == 'cuda' and 'cuda' in states:
        torch.cuda.set_rng_state(states['cuda'], device)


def make_training_state(iteration: int, epoch: int, optimizer: torch.optim.Optimizer, lr: float,
                        seed: int, sched: Any, device: torch.device, scaler=None,
                        nonfinite_total: int = 0, config: str = '',
                        rank_rngs: Optional[List[Dict[str, Any]]] = None,
                        best: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Everything besides the weights that an exact resume needs (`sched`: train.Schedule).
    `rank_rngs`: every rank's rng_states (by rank) in a multi-process run: the loss draws random
    numbers (mask subsampling) on each rank, so each rank resumes its own stream. `best`: the
    best validation so far (train.BestRecord.as_dict()), so a resumed run keeps its record."""
    return {
        'format': STATE_FORMAT,
        'config': config,
        'iteration': iteration,
        'epoch': epoch,
        'optimizer': optimizer.state_dict(),
        'lr': lr,
        'lr_steps_done': sum(1 for s in sched.lr_steps if iteration >= s),
        'seed': seed,
        'rng': rng_states(device),
        'rank_rngs': rank_rngs,
        'scaler': scaler.state_dict() if scaler is not None else None,
        'nonfinite_total': nonfinite_total,
        'best': best,
    }


def named_iteration(weights_path: str) -> Optional[int]:
    """The iteration in a checkpoint's name (<config>_<epoch>_<iter>[_interrupt].pth), or None."""
    try:
        return SavePath.from_str(weights_path).iteration
    except ValueError:
        return None


def load_training_state(weights_path: str) -> Optional[Dict[str, Any]]:
    """The state file beside `weights_path`, or None when there is none (weights-only resume)."""
    path = state_path(weights_path)
    if not os.path.isfile(path):
        return None
    state = load_file(path)
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT or 'optimizer' not in state:
        raise CheckpointError(f"{path}: not a training-state file of this train.py")
    expected = named_iteration(weights_path)
    if expected is not None and state['iteration'] != expected:
        raise CheckpointError(f"{path} is for iteration {state['iteration']} but {weights_path} is named "
                              f"for iteration {expected}")
    return state


def restore_training_state(weights_path: str, state: Optional[Dict[str, Any]], optimizer: torch.optim.Optimizer,
                           scaler, device: torch.device, say: Optional[Callable[[str], None]] = None,
                           rank: int = 0, world_size: int = 1) -> Tuple[int, int]:
    """Put the optimizer, AMP scaler and RNGs back where `state` (the file beside `weights_path`)
    recorded them; returns (iteration, non-finite losses so far) to continue from. Without a
    state (weights only, e.g. the original's checkpoints) the iteration comes from the file name."""
    if state is None:
        if say is not None:
            say(f'No training state beside {weights_path}: optimizer momentum and RNG start fresh.')
        return named_iteration(weights_path) or 0, 0
    optimizer.load_state_dict(state['optimizer'])
    if scaler is not None and state.get('scaler'):
        scaler.load_state_dict(state['scaler'])
    rank_rngs = state.get('rank_rngs')
    # The same world size resumes each rank's own RNG streams; another one starts them all from rank 0's.
    _set_rng_states(rank_rngs[rank] if rank_rngs and len(rank_rngs) == world_size else state['rng'], device)
    return state['iteration'], state.get('nonfinite_total', 0)


# ----------------------------------------------------------------------------- the best validation

def _rank_key(box: Optional[float], mask: Optional[float]) -> Tuple[float, float]:
    # Mask mAP decides, box mAP breaks ties; a config without masks is ranked by boxes alone.
    return (-math.inf if mask is None else mask, -math.inf if box is None else box)


@dataclass
class BestRecord:
    """A run's best validation so far (mask mAP first, box mAP on a tie; percent) and how many
    validations came after it without beating it. Saved in the training state, so a resumed run
    keeps it; a new run (and a fine-tune) starts without one."""
    iteration: Optional[int] = None
    epoch: Optional[int] = None
    box: Optional[float] = None
    mask: Optional[float] = None
    stale: int = 0

    def offer(self, iteration: int, epoch: int, box: Optional[float], mask: Optional[float]) -> bool:
        """Record a validation; True when it beats every earlier one (it becomes the best)."""
        if self.iteration is None or _rank_key(box, mask) > _rank_key(self.box, self.mask):
            self.iteration, self.epoch, self.box, self.mask, self.stale = iteration, epoch, box, mask, 0
            return True
        self.stale += 1
        return False

    def as_dict(self) -> Optional[Dict[str, Any]]:
        return asdict(self) if self.iteration is not None else None

    @staticmethod
    def from_dict(record: Optional[Dict[str, Any]]) -> 'BestRecord':
        return BestRecord(**record) if record else BestRecord()

    def beats(self, other: 'BestRecord') -> bool:
        return self.iteration is not None and (
            other.iteration is None or _rank_key(self.box, self.mask) > _rank_key(other.box, other.mask))


def resumed_best(state: Optional[Dict[str, Any]], best_path: str) -> BestRecord:
    """The best validation a resumed run continues from: the one in the resumed training state, or
    the one `best_path` (<config>_best.pth) was saved with when that is better, since a run stopped
    after a new best but before its next checkpoint must not later overwrite the best file with a
    worse one."""
    record = BestRecord.from_dict(state.get('best') if state is not None else None)
    try:
        saved = load_training_state(best_path) if os.path.isfile(best_path) else None
    except CheckpointError:
        saved = None  # an unreadable best file is replaced by the next best validation
    on_disk = BestRecord.from_dict(saved.get('best') if saved is not None else None)
    return on_disk if on_disk.beats(record) else record


# ----------------------------------------------------------------------------- writing

def remove_checkpoint(weights_path: str) -> None:
    for path in (weights_path, state_path(weights_path), classes_path(weights_path)):
        if os.path.exists(path):
            os.remove(path)


def is_complete(weights_path: str) -> bool:
    """A checkpoint that a resume can continue exactly from: weights and training state on disk."""
    return (os.path.isfile(weights_path) and zipfile.is_zipfile(weights_path)
            and os.path.isfile(state_path(weights_path)))


def write_checkpoint(net: Any, weights_path: str, state: Dict[str, Any], keep_latest: bool = False,
                     keep_interval: int = 0,
                     classes: Optional[Tuple[Sequence[str], Optional[Dict[int, int]]]] = None) -> None:
    """Write the training state and the class list (`classes`: names and label map), then the
    weights (`net.save_weights`), then tidy the folder.

    An interrupt save replaces older interrupt saves; a `<config>_best.pth` only itself. With
    `keep_latest`, a periodic save replaces the previous periodic one once it is complete, except
    milestones at multiples of `keep_interval`. Raises CheckpointWriteError, leaving the earlier checkpoints intact.
    """
    folder = os.path.dirname(weights_path) or '.'
    interrupt = weights_path.endswith(SavePath.INTERRUPT_SUFFIX + '.pth')
    # The best copy (<config>_best.pth) replaces only itself: nothing to tidy.
    best = SavePath.is_best(weights_path)
    previous = None if interrupt or best else \
        SavePath.get_latest(folder, SavePath.from_str(weights_path).model_name, include_interrupt=False)
    try:
        save_file(state, state_path(weights_path))
        if classes is not None:
            write_classes(weights_path, state.get('config', ''), *classes)
        net.save_weights(weights_path)
    except Exception as err:
        raise CheckpointWriteError(f"could not write checkpoint {weights_path}: {err}; earlier checkpoints "
                                   f"are intact") from None
    if interrupt:
        for old in SavePath.interrupt_files(folder):
            if os.path.abspath(old) != os.path.abspath(weights_path):
                remove_checkpoint(old)
    elif keep_latest and previous is not None and os.path.abspath(previous) != os.path.abspath(weights_path):
        if not is_complete(weights_path):
            return
        if keep_interval > 0 and SavePath.from_str(previous).iteration % keep_interval == 0:
            return
        print(f'Deleting old save {previous}')
        remove_checkpoint(previous)


# ----------------------------------------------------------------------------- resuming

def resolve_resume(resume: Optional[str], save_folder: str, config: str) -> Optional[str]:
    """--resume value -> checkpoint path (None: start fresh). 'latest'/'interrupt' search
    save_folder and fail when nothing is there; 'auto' takes the newest complete checkpoint
    (periodic or interrupt, weights and training state on disk) and starts fresh without one,
    so the same command starts a job and restarts it (torchrun --max-restarts, a requeued job)."""
    if resume is None:
        return None
    if resume == 'auto':
        return SavePath.get_latest(save_folder, config, accept=is_complete)
    if resume == 'interrupt':
        path = SavePath.get_interrupt(save_folder)
        if path is None:
            raise FileNotFoundError(f"--resume interrupt: no *_interrupt.pth in {save_folder}")
        return path
    if resume == 'latest':
        path = SavePath.get_latest(save_folder, config)
        if path is None:
            raise FileNotFoundError(f"--resume latest: no {config}_*.pth checkpoint in {save_folder}")
        return path
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume: checkpoint not found: {resume}")
    return resume


def agree_on_resume(resume: Optional[str], save_folder: str, config: str, info: DistInfo) -> Optional[str]:
    """The checkpoint every process resumes from: rank 0 resolves --resume, and each rank must see
    that file itself (on several nodes --save_folder has to be a shared folder); else one error on
    every rank, rather than ranks that start from different weights."""
    choice: Tuple[Optional[str], Optional[str]] = (None, None)  # (path, error)
    if info.is_main:
        try:
            choice = (resolve_resume(resume, save_folder, config), None)
        except FileNotFoundError as err:
            choice = (None, str(err))
    path, error = broadcast_from_rank0(choice)
    if error is not None:
        raise FileNotFoundError(error)
    if path is not None:
        missing = [rank for rank, seen in enumerate(all_gather(os.path.isfile(path))) if not seen]
        if missing:
            raise FileNotFoundError(f"rank(s) {', '.join(map(str, missing))} cannot see {path}, the checkpoint "
                                    f"rank 0 resumes from: --save_folder must be one folder shared by all nodes")
    return path
