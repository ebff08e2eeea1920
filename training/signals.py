"""SIGINT / SIGTERM during training: a stop request the training loop polls between iterations, so
a scheduler's preemption or a Ctrl-C ends with a resumable interrupt checkpoint."""
import signal
from typing import Any, Dict, Optional


class StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks training to stop after the current iteration
    (and save); a second one aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f'\n{signal.Signals(signum).name} received: saving after this iteration '
              f'(send it again to quit without saving).', flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None
