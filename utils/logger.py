"""Training logs as JSON lines, one object per line, compatible with the original's log files.

Each line is ``{"type": ..., "session": n, "data": {...}, "time": unix_seconds}``. A run appends a
``"session"`` header (its settings in ``data``) and then one line per ``Log.log`` call; resuming a
run with the same name appends a new session to the same file, so one file holds a whole
training history.
"""
import json
import math
import os
import time
from typing import Any, Dict, Iterator, List, Optional


def _jsonable(value: Any) -> Any:
    """Make `value` JSON-serialisable: tensors/numpy scalars to numbers, non-finite floats to str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, 'tolist') and callable(value.tolist):  # torch.Tensor, numpy array/scalar
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        # json.dumps would write NaN/Infinity, which strict JSON readers reject.
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class Log:
    """Append-only JSON-lines log at ``<log_dir>/<log_name>.log``.

    Args:
        log_name: file name without extension (the config name during training).
        log_dir: folder, created if missing.
        session_data: settings of this run, written once in the session header.
        overwrite: start a new file instead of appending to an existing one.
        log_time: add the wall-clock time to every line.
    """

    def __init__(self, log_name: str, log_dir: str = 'logs/', session_data: Optional[dict] = None,
                 overwrite: bool = False, log_time: bool = True):
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, log_name + '.log')
        self.log_time = log_time
        if overwrite and os.path.exists(self.log_path):
            os.remove(self.log_path)
        self.session = self._next_session()
        self._write({'type': 'session', 'session': self.session, 'data': _jsonable(session_data or {})})

    def _next_session(self) -> int:
        """One more than the last session number in an existing file; 0 for a new file."""
        last = -1
        for entry in read_log(self.log_path):
            last = max(last, int(entry.get('session', -1)))
        return last + 1

    def _write(self, info: Dict[str, Any]) -> None:
        if self.log_time:
            info['time'] = time.time()
        line = json.dumps(info) + '\n'
        # One write call per line in append mode: a crash never leaves half a line before the next.
        with open(self.log_path, 'a') as f:
            f.write(line)

    def log(self, type: str, data: Optional[dict] = None, **kwdargs) -> None:
        """Append one entry of kind `type` ('train', 'val', ...); values from `data` and keywords."""
        payload = dict(kwdargs)
        payload.update(data or {})
        self._write({'type': type, 'session': self.session, 'data': _jsonable(payload)})


def read_log(path: str) -> Iterator[Dict[str, Any]]:
    """Entries of a JSON-lines log; a torn last line (a crash mid-write) is skipped."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def read_entries(path: str, type: str, session: Optional[int] = None) -> List[Dict[str, Any]]:
    """The entries of kind `type` (optionally of one session) in the log at `path`."""
    return [e for e in read_log(path) if e.get('type') == type
            and (session is None or e.get('session') == session)]


# ----------------------------------------------------------------------------------------------
# Plotting of logs (the original's LogVisualizer) goes below; it reads files through read_log.

def training_curves(path: str) -> Dict[str, Any]:
    """Loss and validation curves of a training log, all sessions (resumes) merged by iteration.

    Returns {'iters': [...], 'losses': {term: [...]}, 'val_iters': [...], 'box_map': [...],
    'mask_map': [...]}. A resumed run that repeats iterations keeps the latest value of each.
    """
    train: Dict[int, Dict[str, float]] = {}
    val: Dict[int, Dict[str, Any]] = {}
    for entry in read_log(path):
        data = entry.get('data', {})
        if entry.get('type') == 'train' and data.get('finite', True) and 'loss' in data:
            train[int(data['iter'])] = {k: float(v) for k, v in data['loss'].items()}
        elif entry.get('type') == 'val' and 'iter' in data:
            val[int(data['iter'])] = data
    iters = sorted(train)
    terms = sorted({k for losses in train.values() for k in losses}, key=lambda k: (k == 'T', k))
    val_iters = sorted(val)

    def overall(data: Dict[str, Any], kind: str) -> Optional[float]:
        value = data.get(kind, {}).get('all') if isinstance(data.get(kind), dict) else None
        return None if value is None else float(value)

    return {
        'iters': iters,
        'losses': {t: [train[i].get(t, math.nan) for i in iters] for t in terms},
        'val_iters': val_iters,
        'box_map': [overall(val[i], 'box') for i in val_iters],
        'mask_map': [overall(val[i], 'mask') for i in val_iters],
    }


def _smooth(values: List[float], window: int) -> List[float]:
    """Trailing moving average, so noisy per-iteration losses read as a curve."""
    out, acc, queue = [], 0.0, []
    for v in values:
        queue.append(v)
        acc += v
        if len(queue) > window:
            acc -= queue.pop(0)
        out.append(acc / len(queue))
    return out


def plot_log(path: str, out_png: str, smooth: int = 20) -> str:
    """Write a PNG of every loss term (left) and the validation box/mask mAP (right) over iterations."""
    import matplotlib
    matplotlib.use('Agg')  # headless: no display needed
    import matplotlib.pyplot as plt

    if not os.path.isfile(path):
        raise FileNotFoundError(f"training log not found: {path}")
    curves = training_curves(path)
    if not curves['iters']:
        raise ValueError(f"{path}: no training entries to plot")
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(12, 4.5))
    for term, values in curves['losses'].items():
        ax_loss.plot(curves['iters'], _smooth(values, smooth), label=term, linewidth=2 if term == 'T' else 1)
    ax_loss.set_xlabel('iteration')
    ax_loss.set_ylabel(f'loss (moving average of {smooth})')
    ax_loss.set_yscale('log')
    ax_loss.legend(title='term')
    ax_loss.grid(True, alpha=0.3)
    for key, label in (('box_map', 'box mAP'), ('mask_map', 'mask mAP')):
        pts = [(i, v) for i, v in zip(curves['val_iters'], curves[key]) if v is not None]
        if pts:
            ax_map.plot(*zip(*pts), marker='o', label=label)
    ax_map.set_xlabel('iteration')
    ax_map.set_ylabel('COCO mAP .50:.95 (%)')
    ax_map.set_ylim(0, 100)
    ax_map.grid(True, alpha=0.3)
    if curves['val_iters']:
        ax_map.legend()
    else:
        ax_map.text(0.5, 0.5, 'no validation entries', ha='center', va='center', transform=ax_map.transAxes)
    fig.suptitle(os.path.basename(path))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description='Plot a YOLACT training log: '
                                     'python -m utils.logger plot logs/<name>.log out.png')
    sub = parser.add_subparsers(dest='command', required=True)
    plot = sub.add_parser('plot', help='loss terms and validation mAP over iterations, as a PNG')
    plot.add_argument('log', help='JSON-lines training log (logs/<config name>.log)')
    plot.add_argument('out', help='PNG to write')
    plot.add_argument('--smooth', type=int, default=20, help='moving-average window for the losses')
    args = parser.parse_args(argv)
    try:
        print(f'wrote {plot_log(args.log, args.out, args.smooth)}')
    except (ValueError, OSError) as err:
        print(f'error: {err}')
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
