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
