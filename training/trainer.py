"""One training run: the datasets and first weights of a run (`build_datasets`, `start_weights`)
and the loop (`Trainer`: iterations, checkpoints, validations, the best checkpoint, stop requests).
train.py parses the flags, builds these pieces (its `setup`) and calls `Trainer.run`."""
import argparse
import os
import signal
import time
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.utils.data as torch_data

from data.coco import COCODetection, prepare_batch
from data.config import MEANS, STD, Config
from data.sampler import ResumableSampler
from evaluation.evaluator import validation_map
from training.distributed import DistInfo, all_gather, all_ranks_agree, barrier, broadcast_from_rank0
from training.progress import Reporter
from training.schedule import Schedule, learning_rate, set_lr
from training.signals import StopRequest
from training.state import BestRecord, CheckpointWriteError, make_training_state, rng_states, write_checkpoint
from training.step import StepResult, train_step
from training.tensorboard import TensorBoardWriter
from utils.augmentations import BaseTransform, SSDAugmentation
from utils.device import synchronize
from utils.functions import SavePath
from utils.logger import Log
from yolact import Yolact


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, ...)."""


def build_datasets(config: Config, seed: int, need_val: bool,
                   annotations: Dict[str, dict]) -> Tuple[COCODetection, Optional[COCODetection]]:
    """Training set with SSDAugmentation and (if validating) the validation set with BaseTransform.
    `annotations`: files already parsed (configure's); each is handed to one dataset only, since
    COCOeval writes into the ground truth it scores."""
    dataset = config.dataset
    train_set = COCODetection(image_path=dataset.train_images, info_file=dataset.train_info,
                              transform=SSDAugmentation(config, MEANS, STD), dataset_name=dataset.name,
                              config=config, resample_seed=seed, annotations=annotations.pop(dataset.train_info, None))
    val_set = None
    if need_val:
        val_set = COCODetection(image_path=dataset.valid_images, info_file=dataset.valid_info,
                                transform=BaseTransform(config, MEANS, STD), dataset_name=dataset.name,
                                has_gt=dataset.has_gt, config=config,
                                annotations=annotations.pop(dataset.valid_info, None))
    return train_set, val_set


def init_weights(net: Yolact, config: Config, save_folder: str) -> Optional[str]:
    """Pretrained backbone (config.backbone.path) from <save_folder>/ or weights/ if present, else
    training from scratch. Returns the backbone file used, or None."""
    path = config.backbone.path  # None: no pretrained weights exist for this backbone
    found = [p for p in (os.path.join(f, path) for f in (save_folder, 'weights') if path) if os.path.isfile(p)]
    net.init_weights(backbone_path=found[0] if found else None)
    return found[0] if found else None


def start_weights(net: Yolact, config: Config, args: argparse.Namespace, say: Callable[[str], None]) -> None:
    """A new run's weights: --finetune's matching tensors, else a pretrained backbone, else from scratch."""
    if args.finetune is None:
        backbone = init_weights(net, config, args.save_folder)
        if backbone:
            say(f'Initialized the backbone from {backbone}.')
        elif config.backbone.path:
            say(f'No pretrained backbone ({config.backbone.path} not in {args.save_folder} or weights/): '
                f'training from scratch.')
        else:
            say(f'{config.backbone.name} has no pretrained weights: training from scratch.')
        return
    net.init_weights(backbone_path=None)
    loaded, fresh = net.load_finetune_weights(args.finetune)
    say(f'Fine-tuning from {args.finetune}: loaded {len(loaded)} tensors, re-initialised {len(fresh)}'
        + (f' ({", ".join(fresh)})' if fresh else '') + '.')


class Trainer:
    """Holds one training run's pieces; `run()` trains from `iteration` to `sched.max_iter`."""

    def __init__(self, args: argparse.Namespace, info: DistInfo, device: torch.device, config: Config,
                 sched: Schedule, seed: int, net: Yolact, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loader: torch_data.DataLoader, sampler: ResumableSampler, val_set: Optional[COCODetection],
                 log: Optional[Log], scaler=None, amp_dtype: Optional[torch.dtype] = None,
                 iteration: int = 0, nonfinite_total: int = 0, tensorboard: Optional[TensorBoardWriter] = None,
                 best: Optional[BestRecord] = None):
        self.args, self.info, self.device, self.seed = args, info, device, seed
        self.config, self.sched = config, sched
        self.net, self.model, self.optimizer = net, model, optimizer
        self.loader, self.sampler, self.val_set = loader, sampler, val_set
        self.scaler, self.amp_dtype = scaler, amp_dtype
        self.iteration = iteration
        self.epoch_size = sampler.batches_per_epoch()
        self.nonfinite_total = nonfinite_total
        self.nonfinite_run = 0
        self.lr = learning_rate(iteration, sched)
        self.stop = StopRequest()
        self.report = Reporter(log, info.is_main, args.batch_size * info.world_size, args.log_interval,
                               sched.max_iter, tensorboard=tensorboard)
        self.start_iteration = iteration
        self.best = best if best is not None else BestRecord()

    # ---------------------------------------------------------------- saving

    def save(self, epoch: int, interrupt: bool = False, best: bool = False) -> Optional[str]:
        """Rank 0 writes the checkpoint (`best`: as <config>_best.pth); every rank learns whether it
        worked (no one trains on alone)."""
        path, error = None, None
        # Every rank takes part; only rank 0 keeps the list.
        rank_rngs = all_gather(rng_states(self.device)) if self.info.distributed else None
        if self.info.is_main:
            name = self.config.name
            path = SavePath.best_path(name, self.args.save_folder) if best else \
                SavePath(name, epoch, f'{self.iteration}{"_interrupt" if interrupt else ""}'
                         ).get_path(root=self.args.save_folder)
            state = make_training_state(self.iteration, epoch, self.optimizer, self.lr, self.seed, self.sched,
                                        self.device, self.scaler, self.nonfinite_total, config=name,
                                        rank_rngs=rank_rngs, best=self.best.as_dict())
            try:
                write_checkpoint(self.net, path, state, self.args.keep_latest, self.args.keep_latest_interval,
                                 classes=(self.config.dataset.class_names, self.config.dataset.label_map))
            except CheckpointWriteError as err:
                error = err
        if not all_ranks_agree(error is None, self.device):
            raise error if error is not None else CheckpointWriteError('rank 0 could not write a checkpoint')
        return path

    # ---------------------------------------------------------------- validation

    def results_dir(self) -> Optional[str]:
        """Where validations write metrics.json and the plots (the latest validation's)."""
        if not (self.args.log or self.args.tensorboard):
            return None
        return os.path.join(self.args.log_folder, f'{self.config.name}_val')

    def validate(self, epoch: int) -> bool:
        """Validate, keep <config>_best.pth when the mAP improved; True when --patience says stop."""
        improved, stop = False, False
        if self.info.is_main and self.val_set is not None:
            print('\nComputing validation mAP (this may take a while)...', flush=True)
            start = time.perf_counter()
            folder = self.results_dir()
            val_info = validation_map(self.net, self.val_set, self.args.validation_size, self.amp_dtype,
                                      self.args.coco_eval, results_dir=folder, iteration=self.iteration)
            self.report.validation(epoch, self.iteration, val_info, time.perf_counter() - start, folder)
            if self.report.tensorboard is not None:
                self.report.tensorboard.predictions(self.net, self.val_set, self.iteration,
                                                    self.config.dataset.class_names, self.amp_dtype)
            if val_info is not None:
                improved = self.best.offer(self.iteration, epoch, val_info.get('box', {}).get('all'),
                                           val_info.get('mask', {}).get('all'))
                stop = 0 < self.args.patience <= self.best.stale
        barrier()
        improved, stop = broadcast_from_rank0((improved, stop))
        if improved:
            self.report.best(self.best, self.save(epoch, best=True))
        return stop

    # ---------------------------------------------------------------- the loop

    def _after_step(self, epoch: int, result: StepResult, elapsed: float) -> None:
        it = self.iteration  # index of the iteration just run
        if result.finite:
            self.nonfinite_run = 0
        else:
            self.nonfinite_run += 1
            self.nonfinite_total += 1
            self.report.nonfinite(epoch, it, result.losses, self.nonfinite_run, self.nonfinite_total)
            if self.nonfinite_run >= self.args.max_nonfinite:
                raise TrainingError(
                    f"stopping: {self.nonfinite_run} non-finite losses in a row (iteration {it}); training "
                    f"diverged. Lower --lr and resume from the last checkpoint in {self.args.save_folder}")
        self.report.step(epoch, it, result.losses, result.total, result.finite, self.lr, elapsed)

    def _run_epoch(self, epoch: int) -> None:
        """Iterate from self.iteration to the end of `epoch` (or max_iter, or a stop request)."""
        self.sampler.set_epoch(epoch, skip_batches=self.iteration - epoch * self.epoch_size)
        epoch_end = min((epoch + 1) * self.epoch_size, self.sched.max_iter)
        batches = iter(self.loader)
        try:
            last_time = time.perf_counter()
            while self.iteration < epoch_end and not self._stop_requested():
                datum = next(batches)
                self.lr = learning_rate(self.iteration, self.sched)
                set_lr(self.optimizer, self.lr)
                batch = prepare_batch(datum, self.device, self.config.preserve_aspect_ratio)
                result = train_step(self.model, self.optimizer, batch, self.scaler)
                synchronize(self.device)
                now = time.perf_counter()
                elapsed, last_time = now - last_time, now
                self._after_step(epoch, result, elapsed)
                self.iteration += 1
                if self.iteration % self.args.save_interval == 0 and self.iteration != self.start_iteration \
                        and self.iteration < self.sched.max_iter:
                    if self.info.is_main:
                        print(f'Saving state, iter: {self.iteration}', flush=True)
                    self.save(epoch)
                    last_time = time.perf_counter()
        finally:
            # Shuts DataLoader workers down now rather than at garbage collection.
            stop_workers = getattr(batches, '_shutdown_workers', None)
            if stop_workers is not None:
                stop_workers()
            del batches

    def _stop_requested(self) -> bool:
        return all_ranks_agree(self.stop.requested, self.device, want_all=False)

    def run(self) -> int:
        """Train to max_iter. Returns the exit status (0, or 128 + signal number when interrupted)."""
        if self.iteration >= self.sched.max_iter:
            # A resumed run that is already complete: saving again would only add a duplicate.
            if self.info.is_main:
                print(f'Already at iteration {self.iteration} of {self.sched.max_iter}: nothing to train.',
                      flush=True)
            return 0
        if self.args.interrupt:
            self.stop.install()
        try:
            epoch = self.iteration // self.epoch_size
            patience_stop = False
            while self.iteration < self.sched.max_iter and not patience_stop:
                epoch = self.iteration // self.epoch_size
                self._run_epoch(epoch)
                if self._stop_requested():
                    return self._interrupted(epoch)
                finished_epoch = self.iteration % self.epoch_size == 0
                if (finished_epoch and self.args.validation_epoch > 0 and epoch > 0
                        and epoch % self.args.validation_epoch == 0 and self.iteration < self.sched.max_iter):
                    patience_stop = self.validate(epoch)
            if patience_stop:
                self.report.early_stop(self.args.patience, self.iteration, self.best)
            elif self.args.validation_epoch > 0 and self.iteration > self.start_iteration:
                self.validate(epoch)
            path = self.save(epoch)
            self.report.summary(self.iteration, self.iteration - self.start_iteration, self.nonfinite_total, path,
                                best=self.best)
            return 0
        finally:
            self.stop.restore()
            self.report.close()

    def _interrupted(self, epoch: int) -> int:
        signum = self.stop.signum or signal.SIGINT
        path = self.save(epoch, interrupt=True)
        self.report.interrupted(signal.Signals(signum).name, epoch, self.iteration, path)
        return 128 + int(signum)
