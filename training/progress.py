"""What training reports as it goes, on the console and in the JSON-lines log (and, with
--tensorboard, in TensorBoard event files: training/tensorboard.py): the original's progress line
(moving averages of the loss terms, ETA, images per second, plus an average fps that leaves out the
warm-up iterations), skipped steps, validation, interruption, the summary."""
import datetime
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

from evaluation.report import ClassRow, format_class_table
from training.tensorboard import TensorBoardWriter
from utils.functions import MovingAverage
from utils.logger import Log

# Print order of the loss terms (the original's).
LOSS_TYPES = ['B', 'C', 'M', 'P', 'D', 'E', 'S', 'I']
# Iterations of each session left out of the average fps (graph setup, NPU operator compilation).
FPS_WARMUP_ITERS = 5


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


@dataclass
class Progress:
    """Timing and loss bookkeeping of one session (fps excludes the first iterations)."""
    global_batch: int
    loss_avgs: Dict[str, MovingAverage] = field(default_factory=lambda: {k: MovingAverage(100) for k in LOSS_TYPES})
    time_avg: MovingAverage = field(default_factory=MovingAverage)
    steps: int = 0
    timed_images: int = 0
    timed_seconds: float = 0.0

    def add(self, losses: Dict[str, float], elapsed: float) -> None:
        """Record one finite training step: its loss terms and its duration in seconds."""
        self.steps += 1
        for k, v in losses.items():
            self.loss_avgs[k].add(v)
        if self.steps > 1:
            self.time_avg.add(elapsed)  # the first iteration builds graphs/caches
        if self.steps > FPS_WARMUP_ITERS:
            self.timed_images += self.global_batch
            self.timed_seconds += elapsed

    def avg_fps(self) -> float:
        """Images per second over this session, leaving out the first FPS_WARMUP_ITERS iterations
        (all but the first when the session is shorter than that)."""
        if self.timed_seconds > 0:
            return self.timed_images / self.timed_seconds
        if len(self.time_avg) > 0:
            return self.global_batch / self.time_avg.get_avg()
        return float('nan')

    def final_loss(self) -> float:
        """The sum of the loss terms' moving averages (terms not seen in this session left out)."""
        return sum(self.loss_avgs[k].get_avg() for k in LOSS_TYPES if len(self.loss_avgs[k]))

    def line(self, epoch: int, iteration: int, keys: Sequence[str], elapsed: float, max_iter: int) -> str:
        order = [k for k in LOSS_TYPES if k in keys]
        parts = ' | '.join(f'{k}: {self.loss_avgs[k].get_avg():.3f}' for k in order)
        total = sum(self.loss_avgs[k].get_avg() for k in order)
        eta = format_eta((max_iter - iteration) * self.time_avg.get_avg())
        fps = self.global_batch / elapsed if elapsed > 0 else float('nan')
        return (f'[{epoch:3d}] {iteration:7d} || {parts} | T: {total:.3f} || ETA: {eta} || '
                f'timer: {elapsed:.3f} || fps: {fps:.2f} | avg fps: {self.avg_fps():.2f}')


def _map_text(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value:.2f}'


class Reporter:
    """What a training run tells the console (global rank 0 only), the JSON-lines log (`log`,
    None when logging is off or on the other ranks) and TensorBoard (`tensorboard`, likewise)."""

    def __init__(self, log: Optional[Log], is_main: bool, global_batch: int, log_interval: int, max_iter: int,
                 tensorboard: Optional[TensorBoardWriter] = None):
        self.log, self.is_main, self.tensorboard = log, is_main, tensorboard
        self.log_interval, self.max_iter = log_interval, max_iter
        self.progress = Progress(global_batch=global_batch)

    def _print(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)

    def _log(self, kind: str, *args: Any, **fields: Any) -> None:
        if self.log is not None:
            self.log.log(kind, *args, **fields)

    def step(self, epoch: int, iteration: int, losses: Dict[str, float], total: float, finite: bool,
             lr: float, elapsed: float) -> None:
        """One iteration: the progress line every log_interval finite iterations, and a log record."""
        if finite:
            self.progress.add(losses, elapsed)
            if iteration % self.log_interval == 0:
                self._print(self.progress.line(epoch, iteration, losses.keys(), elapsed, self.max_iter))
            if self.tensorboard is not None:
                speed = self.progress.global_batch / elapsed if elapsed > 0 else None
                self.tensorboard.train_step(iteration, losses, total, lr, speed)
        loss_info = {k: round(v, 5) for k, v in losses.items()}
        loss_info['T'] = round(total, 5)
        self._log('train', loss=loss_info, epoch=epoch, iter=iteration, lr=round(lr, 10), elapsed=elapsed,
                  finite=finite)

    def nonfinite(self, epoch: int, iteration: int, losses: Dict[str, float], in_a_row: int, total: int) -> None:
        shown = ', '.join(f'{k}: {v:.4g}' for k, v in losses.items())
        self._print(f'[{epoch:3d}] {iteration:7d} || non-finite loss ({shown}); update skipped '
                    f'({in_a_row} in a row, {total} in total)')
        self._log('nonfinite', loss=losses, epoch=epoch, iter=iteration, in_a_row=in_a_row, total=total)

    def validation(self, epoch: int, iteration: int, val_info: Optional[Dict[str, Any]], elapsed: float,
                   results_dir: Optional[str] = None) -> None:
        """The mAP line and the per-class table; `results_dir`: where metrics.json and the plots
        were written (TensorBoard shows the plots)."""
        if val_info is None:
            self._print('Validation: the validation set has no ground truth, no mAP computed.')
            val_info = {}
        else:
            box, mask = val_info.get('box', {}).get('all'), val_info.get('mask', {}).get('all')
            self._print(f'Validation (epoch {epoch}, iteration {iteration}): box mAP {_map_text(box)}, '
                        f'mask mAP {_map_text(mask)} '
                        f'({elapsed:.1f}s)')
            if val_info.get('classes'):
                self._print(format_class_table([ClassRow.from_dict(r) for r in val_info['classes']])
                            + (f'\n(metrics.json and plots in {results_dir}/)' if results_dir else ''))
        self._log('val', val_info, elapsed=elapsed, epoch=epoch, iter=iteration)
        if self.tensorboard is not None:
            self.tensorboard.validation(iteration, val_info)
            if results_dir is not None and val_info:
                self.tensorboard.plots(results_dir, iteration)
            self.tensorboard.flush()

    def best(self, best: Any, path: Optional[str]) -> None:
        """A validation beat every earlier one (`best`: train_state.BestRecord) and was saved."""
        self._print(f'New best validation at iteration {best.iteration}: mask mAP {_map_text(best.mask)}, '
                    f'box mAP {_map_text(best.box)}; saved {path}')
        self._log('best', iter=best.iteration, epoch=best.epoch, box=best.box, mask=best.mask, checkpoint=path)

    def early_stop(self, patience: int, iteration: int, best: Any) -> None:
        self._print(f'Stopping at iteration {iteration}: {patience} validation(s) in a row without a better '
                    f'mask mAP (--patience {patience}; best: iteration {best.iteration}).')
        self._log('early_stop', iter=iteration, patience=patience, best_iter=best.iteration)

    def interrupted(self, signal_name: str, epoch: int, iteration: int, path: Optional[str]) -> None:
        self._log('interrupt', signal=signal_name, epoch=epoch, iter=iteration, checkpoint=path)
        self._print(f'Stopped by {signal_name} at iteration {iteration}; saved {path}.\n'
                    f'Resume with the same flags plus --resume=interrupt (or --resume={path}).')

    def summary(self, iteration: int, iterations: int, nonfinite_total: int, path: Optional[str],
                best: Any = None) -> None:
        """The closing lines the launch scripts read (training/launch_summary.py) and the summary record;
        `best` (train_state.BestRecord) names the best validation."""
        final_loss, fps = self.progress.final_loss(), self.progress.avg_fps()
        self._print(f'Training finished at iteration {iteration}; saved {path}.\n'
                    f'Train summary: iterations={iterations} images_per_sec={fps:.3f} '
                    f'final_loss={final_loss:.4f} nonfinite_skipped={nonfinite_total}')
        best_iter = best.iteration if best is not None else None
        if best_iter is not None:
            self._print(f'Best validation: iteration {best_iter}, mask mAP {_map_text(best.mask)}, '
                        f'box mAP {_map_text(best.box)}')
        self._log('summary', iter=iteration, images_per_sec=fps, final_loss=final_loss,
                  nonfinite_skipped=nonfinite_total, checkpoint=path, best_iter=best_iter)

    def close(self) -> None:
        """Write out what is buffered (TensorBoard); called when training ends, however it ends."""
        if self.tensorboard is not None:
            self.tensorboard.close()
