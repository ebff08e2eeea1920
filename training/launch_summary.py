"""Read back a training run for the test/*.sh launch scripts: the final checkpoint, and the
Ascend-style summary (printed block and ``<CaseName>.log`` key = value file).

    python -m training.launch_summary checkpoint --log_folder L --save_folder S --console train_0.log
    python -m training.launch_summary report --case YOLACT_bs8_1p_acc --rank_size 1 --batch_size 8 \
        --node_device cpu --log_folder L --console train_0.log --metrics eval_0_metrics \
        --e2e_seconds 123 --out test/output/0/YOLACT_bs8_1p_acc.log

The numbers come from train.py's JSON-lines log (the ``summary`` record of the last session) and,
when the log is switched off (--no_log), from the ``Train summary:`` line train.py prints. The
accuracy is read from the metrics.json eval.py writes (its --results_dir).
"""
import argparse
import glob
import json
import math
import os
import platform
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from utils.functions import SavePath
from utils.logger import read_log

NETWORK = 'YOLACT'

# train.py's closing lines (the fallback when there is no JSON log).
_SUMMARY_LINE = re.compile(r'Train summary: iterations=(\d+) images_per_sec=(\S+) final_loss=(\S+)')
_SAVED_LINE = re.compile(r'Training finished at iteration \d+; saved (.+)\.\s*$')


class SummaryError(RuntimeError):
    """The run left nothing to summarise (no log record, no checkpoint, no metrics.json)."""


@dataclass
class TrainResult:
    """What a finished training session reports: throughput over all processes (images/s,
    warm-up iterations excluded), the moving-average total loss, and the checkpoint it saved."""
    images_per_sec: float
    final_loss: float
    iterations: Optional[int] = None
    checkpoint: Optional[str] = None


def _as_float(value) -> float:
    """Numbers as train.py logs them; non-finite ones are written as strings ('nan')."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float('nan')


def json_logs(log_folder: str) -> List[str]:
    """The JSON-lines logs in `log_folder`, newest last."""
    return sorted(glob.glob(os.path.join(log_folder, '*.log')), key=os.path.getmtime)


def result_from_json_log(path: str, since: Optional[float] = None) -> Optional[TrainResult]:
    """The `summary` record of the last session in `path`; None when that session has none (it
    did not finish) or, with `since` (unix seconds), when it started before then (an earlier run;
    this one ran with --no_log or elsewhere)."""
    last_session, started, summary = None, None, None
    for entry in read_log(path):
        if entry.get('type') == 'session':
            last_session, started, summary = entry.get('session'), entry.get('time'), None
        elif entry.get('type') == 'summary' and entry.get('session') == last_session:
            summary = entry.get('data', {})
    if summary is None:
        return None
    if since is not None and (started is None or _as_float(started) < since):
        return None
    iterations = summary.get('iter')
    return TrainResult(images_per_sec=_as_float(summary.get('images_per_sec')),
                       final_loss=_as_float(summary.get('final_loss')),
                       iterations=int(iterations) if iterations is not None else None,
                       checkpoint=summary.get('checkpoint'))


def result_from_console(path: str) -> Optional[TrainResult]:
    """The last `Train summary:` line (and the checkpoint line before it) of a console log."""
    if not os.path.isfile(path):
        return None
    result, checkpoint = None, None
    with open(path, errors='replace') as f:
        for line in f:
            saved = _SAVED_LINE.search(line)
            if saved:
                checkpoint = saved.group(1)
            found = _SUMMARY_LINE.search(line)
            if found:
                result = TrainResult(images_per_sec=_as_float(found.group(2)),
                                     final_loss=_as_float(found.group(3)),
                                     iterations=int(found.group(1)), checkpoint=checkpoint)
    return result


def train_result(log_folder: str, console: Optional[str] = None, since: Optional[float] = None) -> TrainResult:
    """The finished run's numbers: the newest JSON log first (its last session, if it started
    after `since`), else the console output."""
    logs = json_logs(log_folder) if os.path.isdir(log_folder) else []
    result = result_from_json_log(logs[-1], since) if logs else None
    if result is None and console is not None:
        result = result_from_console(console)
    if result is None:
        raise SummaryError(f"no training summary found: neither a 'summary' record in a JSON log under "
                           f"{log_folder} nor a 'Train summary:' line in {console}")
    return result


def _checkpoint_rank(path: str) -> Tuple[float, int]:
    """Sort key of a checkpoint: newest file first, then the highest iteration in its name."""
    try:
        iteration = SavePath.from_str(path).iteration
    except ValueError:
        iteration = -1
    return os.path.getmtime(path), iteration


def final_checkpoint(save_folder: str, log_folder: Optional[str] = None,
                     console: Optional[str] = None, since: Optional[float] = None) -> str:
    """The checkpoint the run ended with: the one its summary names, else the newest `.pth` in
    `save_folder` (interrupt saves and the best copy excluded; the highest iteration wins among
    equally new files)."""
    try:
        named = train_result(log_folder or save_folder, console, since).checkpoint
    except SummaryError:
        named = None
    if named and os.path.isfile(named):
        return named
    candidates = [p for p in glob.glob(os.path.join(save_folder, '*.pth'))
                  if not p.endswith(SavePath.INTERRUPT_SUFFIX + '.pth') and not SavePath.is_best(p)]
    if not candidates:
        raise SummaryError(f"no checkpoint (*.pth) found in {save_folder}")
    return max(candidates, key=_checkpoint_rank)


def eval_accuracy(metrics: str) -> Tuple[float, Optional[float]]:
    """(box mAP, mask mAP) in percent from the metrics.json eval.py wrote (`metrics`: the file or
    its folder, eval.py's --results_dir); mask is None when only boxes were evaluated."""
    path = os.path.join(metrics, 'metrics.json') if os.path.isdir(metrics) else metrics
    if not os.path.isfile(path):
        raise SummaryError(f"metrics.json not found: {path} (did eval.py fail?)")
    with open(path, errors='replace') as f:
        try:
            content = json.load(f)
        except json.JSONDecodeError:
            content = None
    box = content.get('box', {}).get('AP') if isinstance(content, dict) else None
    if box is None:
        raise SummaryError(f"no box AP in {path}")
    mask = content.get('mask', {}).get('AP')
    return float(box), None if mask is None else float(mask)


def _fmt(value: Optional[float], digits: int) -> str:
    if value is None:
        return 'None'
    return f'{value:.{digits}f}' if math.isfinite(value) else 'nan'


def accuracy_text(box: float, mask: Optional[float]) -> str:
    return f'box mAP:{_fmt(box, 2)}, mask mAP:{_fmt(mask, 2)}'


def iteration_time_ms(global_batch: int, images_per_sec: float) -> float:
    """Milliseconds per training iteration of the whole job (global batch / throughput)."""
    if not (math.isfinite(images_per_sec) and images_per_sec > 0):
        return float('nan')
    return 1000.0 * global_batch / images_per_sec


def report(case: str, rank_size: int, batch_size: int, node_device: str, result: TrainResult,
           e2e_seconds: int, accuracy: Optional[Tuple[float, Optional[float]]] = None
           ) -> Tuple[List[str], Dict[str, str]]:
    """The printed summary block and the `<CaseName>.log` fields (in the Ascend scripts' order).

    batch_size is per process; FPS and the iteration time are for all `rank_size` processes.
    """
    fps = _fmt(result.images_per_sec, 3)
    block = ['------------------ Final result ------------------',
             f'Final Performance images/sec : {fps}']
    if accuracy is not None:
        block.append(f'Final Train Accuracy : {accuracy_text(*accuracy)}')
    block.append(f'E2E Training Duration sec : {e2e_seconds}')

    fields = {'Network': NETWORK, 'RankSize': str(rank_size), 'BatchSize': str(batch_size),
              # The Ascend scripts' DeviceType is the host architecture (uname -m).
              'DeviceType': platform.machine() or 'unknown', 'NodeDevice': node_device,
              'CaseName': case, 'ActualFPS': fps,
              'TrainingTime': _fmt(iteration_time_ms(rank_size * batch_size, result.images_per_sec), 2)}
    if accuracy is not None:
        fields['TrainAccuracy'] = accuracy_text(*accuracy)
    fields['ActualLoss'] = _fmt(result.final_loss, 4)
    fields['E2ETrainingTime'] = str(e2e_seconds)
    return block, fields


def write_case_file(path: str, fields: Dict[str, str]) -> None:
    """`Key = value` lines, one per field (the format of the Ascend performance records)."""
    with open(path, 'w') as f:
        for key, value in fields.items():
            f.write(f'{key} = {value}\n')


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='Summaries for the test/*.sh launch scripts.')
    sub = p.add_subparsers(dest='command', required=True)

    ck = sub.add_parser('checkpoint', help='print the path of the final checkpoint of a run')
    ck.add_argument('--save_folder', required=True)
    ck.add_argument('--log_folder', default=None, help="train.py's --log_folder (default: save_folder)")
    ck.add_argument('--console', default=None, help="train.py's console output")
    ck.add_argument('--since', type=float, default=None,
                    help='unix time the run started: older log sessions are not this run')

    rp = sub.add_parser('report', help='print the summary block and write <CaseName>.log')
    rp.add_argument('--case', required=True, help='e.g. YOLACT_bs8_1p_acc')
    rp.add_argument('--rank_size', type=int, required=True)
    rp.add_argument('--batch_size', type=int, required=True, help='per process')
    rp.add_argument('--node_device', required=True, help='cpu, cuda or npu')
    rp.add_argument('--log_folder', required=True, help="train.py's --log_folder")
    rp.add_argument('--console', default=None, help="train.py's console output")
    rp.add_argument('--since', type=float, default=None,
                    help='unix time the run started: older log sessions are not this run')
    rp.add_argument('--metrics', default=None, help="the metrics.json eval.py wrote, or its folder (full runs)")
    rp.add_argument('--e2e_seconds', type=int, required=True)
    rp.add_argument('--out', required=True, help='the <CaseName>.log file to write')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == 'checkpoint':
            print(final_checkpoint(args.save_folder, args.log_folder, args.console, args.since))
            return 0
        result = train_result(args.log_folder, args.console, args.since)
        accuracy = eval_accuracy(args.metrics) if args.metrics else None
        block, fields = report(args.case, args.rank_size, args.batch_size, args.node_device, result,
                               args.e2e_seconds, accuracy)
        write_case_file(args.out, fields)
    except (SummaryError, OSError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print('\n'.join(block))
    return 0


if __name__ == '__main__':
    sys.exit(main())
