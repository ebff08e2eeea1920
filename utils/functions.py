"""Small helpers shared by training, evaluation and deployment: a windowed moving average
(progress and timing), checkpoint file names, a writable-folder check and atomic file writes.

`SavePath` names and parses checkpoints as the original did (`<config>_<epoch>_<iter>.pth`,
`<config>_<epoch>_<iter>_interrupt.pth`), so `--resume latest` finds files written by either. The
best validation's copy, `<config>_best.pth`, is no `<config>_<epoch>_<iter>.pth`: `--resume latest`
never takes it.
"""
import math
import os
import tempfile
from collections import deque
from pathlib import Path
from typing import BinaryIO, Callable, Deque, List, Optional, Union


class MovingAverage:
    """Mean of the last `max_window_size` finite values added (non-finite values are ignored)."""

    def __init__(self, max_window_size: int = 1000):
        self.max_window_size = max_window_size
        self.reset()

    def add(self, elem: float) -> None:
        if not math.isfinite(elem):
            # A non-finite value would poison the mean for the whole window.
            return
        self.window.append(elem)
        self.sum += elem
        if len(self.window) > self.max_window_size:
            self.sum -= self.window.popleft()

    def append(self, elem: float) -> None:
        self.add(elem)

    def reset(self) -> None:
        self.window: Deque[float] = deque()
        self.sum = 0.0

    def get_avg(self) -> float:
        """The mean of the window; 0 when empty."""
        return self.sum / max(len(self.window), 1)

    def __str__(self) -> str:
        return str(self.get_avg())

    def __repr__(self) -> str:
        return repr(self.get_avg())

    def __len__(self) -> int:
        return len(self.window)


class SavePath:
    """A checkpoint name `<model_name>_<epoch>_<iteration>.pth`.

    `iteration` is an int, or a string such as '1234_interrupt' for an interrupt save.
    """

    INTERRUPT_SUFFIX = '_interrupt'
    BEST_SUFFIX = '_best'

    @staticmethod
    def best_path(model_name: str, root: str = '') -> str:
        """`<model_name>_best.pth`: train.py's copy of the checkpoint with the best validation mAP."""
        return os.path.join(root, f'{model_name}{SavePath.BEST_SUFFIX}.pth')

    @staticmethod
    def is_best(path: str) -> bool:
        return os.path.basename(path).endswith(SavePath.BEST_SUFFIX + '.pth')

    def __init__(self, model_name: str, epoch: int, iteration: Union[int, str]):
        self.model_name = model_name
        self.epoch = epoch
        self.iteration = iteration

    def get_path(self, root: str = '') -> str:
        return os.path.join(root, f'{self.model_name}_{self.epoch}_{self.iteration}.pth')

    @staticmethod
    def from_str(path: str) -> 'SavePath':
        """Parse a checkpoint file name; raises ValueError when it does not follow the pattern."""
        stem = os.path.basename(path)
        if stem.endswith('.pth'):
            stem = stem[:-len('.pth')]
        if stem.endswith(SavePath.INTERRUPT_SUFFIX):
            stem = stem[:-len(SavePath.INTERRUPT_SUFFIX)]
        parts = stem.split('_')
        if len(parts) < 3:
            raise ValueError(f"checkpoint name '{os.path.basename(path)}' is not "
                             f"<config>_<epoch>_<iteration>.pth")
        try:
            epoch, iteration = int(parts[-2]), int(parts[-1])
        except ValueError:
            raise ValueError(f"checkpoint name '{os.path.basename(path)}' is not "
                             f"<config>_<epoch>_<iteration>.pth") from None
        return SavePath('_'.join(parts[:-2]), epoch, iteration)

    @staticmethod
    def interrupt_files(save_folder: str) -> List[str]:
        return sorted(str(p) for p in Path(save_folder).glob('*' + SavePath.INTERRUPT_SUFFIX + '.pth'))

    @staticmethod
    def remove_interrupt(save_folder: str) -> None:
        for path in SavePath.interrupt_files(save_folder):
            os.remove(path)

    @staticmethod
    def get_interrupt(save_folder: str) -> Optional[str]:
        """The newest (highest iteration) interrupt checkpoint in `save_folder`, or None."""
        best, best_iter = None, -1
        for path in SavePath.interrupt_files(save_folder):
            try:
                it = SavePath.from_str(path).iteration
            except ValueError:
                continue
            if it > best_iter:
                best, best_iter = path, it
        return best

    @staticmethod
    def get_latest(save_folder: str, config: str, include_interrupt: bool = True,
                   accept: Optional[Callable[[str], bool]] = None) -> Optional[str]:
        """The checkpoint of config name `config` with the highest iteration, or None.

        Interrupt saves count too (as in the original), unless `include_interrupt` is False;
        `accept(path)` can rule files out (e.g. incomplete ones).
        """
        best, best_iter = None, -1
        for p in Path(save_folder).glob(config + '_*.pth'):
            if not include_interrupt and p.stem.endswith(SavePath.INTERRUPT_SUFFIX):
                continue
            if accept is not None and not accept(str(p)):
                continue
            try:
                save = SavePath.from_str(str(p))
            except ValueError:
                continue  # another file that shares the prefix
            if save.model_name == config and save.iteration > best_iter:
                best, best_iter = str(p), save.iteration
        return best


def check_writable_folder(path: str, flag: str) -> None:
    """Create `path` if needed and prove a file can be written there (one clear error otherwise)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix='.write_test_'):
            pass
    except OSError as err:
        raise ValueError(f"{flag} '{path}' is not a writable folder: "
                         f"{err.strerror or type(err).__name__}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary file beside `path`, fsync it, then rename it over `path`: a
    crash or a kill during the write leaves the previous file (or none), never half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); the result gets the mode open() would give it.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
