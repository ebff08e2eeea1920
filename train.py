"""Train YOLACT on one process or many (torchrun / the Ascend launch convention), on CPU, CUDA or NPU.

    python train.py --config=yolact_base_config --batch_size=8
    python train.py --config=yolact_base_config --data=/data/coco --node_device=npu
    torchrun --nproc_per_node=8 train.py --config=yolact_base_config --batch_size=8
    python train.py --config=yolact_base_config --resume=latest      # or interrupt, auto, or a path
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=HOST train.py ...   # README: multi-node

This file holds the flags and the set-up of a run (`setup`: device, config, datasets, network,
optimizer, resume); the rooms do the work: training/trainer.py (the loop: checkpoints, validations,
the best checkpoint), training/schedule.py (config and flags combined, learning rate, optimizer),
training/step.py (NetLoss and one training step), evaluation/evaluator.py (the validation mAP),
training/distributed.py (launch environment, process group), data/sampler.py (seeded, resumable data
order), training/state.py (checkpoints and the training state beside them), training/signals.py
(SIGINT/SIGTERM), training/progress.py (the progress line).
"""
import argparse
import math
import os
import sys
from typing import Optional, Sequence

import torch

from data.coco import check_dataset_files, detection_collate
from data.config import ConfigError
from data.sampler import resumable_loader
from evaluation.coco_results import COCO_EVAL_BACKENDS, check_coco_eval_backend
from training.distributed import (
    DistInfo,
    broadcast_from_rank0,
    dist_info_from_env,
    init_distributed,
    restart_count,
    shutdown,
    wrap_ddp,
)
from training.schedule import DEFAULT_CONFIG, build_optimizer, configure
from training.state import (
    BestRecord,
    CheckpointWriteError,
    agree_on_resume,
    load_training_state,
    restore_training_state,
    resumed_best,
    seed_everything,
)
from training.step import NetLoss, build_criterion
from training.tensorboard import TensorBoardWriter, check_tensorboard, tensorboard_folder
from training.trainer import Trainer, TrainingError, build_datasets, start_weights
from utils.checkpoint import CheckpointError
from utils.device import (
    DeviceError,
    ProbeShape,
    add_amp_dtype_flag,
    autocast_dtype,
    default_device_type,
    grad_scaler,
    prefers_channels_last,
    select_device,
)
from utils.functions import SavePath, check_writable_folder
from utils.logger import Log
from yolact import Yolact


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='YOLACT training script')
    # The original's flags.
    p.add_argument('--config', default=None, help=f'config name (default {DEFAULT_CONFIG})')
    p.add_argument('--dataset', default=None,
                   help="dataset config replacing the config's own (e.g. coco2017_dataset)")
    p.add_argument('--batch_size', default=8, type=int, help='batch size per process')
    p.add_argument('--resume', default=None, type=str,
                   help="checkpoint to resume from: a path, 'latest', 'interrupt', or 'auto' (the newest complete "
                        "checkpoint if any, else start fresh: for torchrun --max-restarts and requeued jobs)")
    p.add_argument('--start_iter', default=-1, type=int,
                   help='iteration to resume at; -1 takes it from the training state / file name')
    p.add_argument('--num_workers', default=4, type=int, help='data loading processes per training process')
    p.add_argument('--lr', '--learning_rate', default=None, type=float, help='learning rate (default: config)')
    p.add_argument('--momentum', default=None, type=float, help='SGD momentum (default: config)')
    p.add_argument('--decay', '--weight_decay', default=None, type=float, help='weight decay (default: config)')
    p.add_argument('--gamma', default=None, type=float, help='lr factor at each lr step (default: config)')
    p.add_argument('--save_folder', default='weights/', help='where checkpoints are written')
    p.add_argument('--log_folder', default='logs/', help='where the JSON-lines log is written')
    p.add_argument('--save_interval', default=10000, type=int, help='iterations between checkpoints')
    p.add_argument('--validation_size', default=5000, type=int, help='images used for validation mAP')
    p.add_argument('--validation_epoch', default=2, type=int,
                   help='validate every N epochs (and at the end); <= 0 turns validation off')
    p.add_argument('--patience', default=0, type=int,
                   help='stop after this many validations in a row without a better mask mAP (0: never); '
                        'the best one is always kept as <save_folder>/<config>_best.pth')
    p.add_argument('--keep_latest', action='store_true', help='keep only the latest checkpoint')
    p.add_argument('--keep_latest_interval', default=100000, type=int,
                   help='with --keep_latest, never delete checkpoints of iterations that are multiples of this')
    p.add_argument('--no_log', dest='log', action='store_false', help='do not write the JSON-lines log')
    p.add_argument('--no_interrupt', dest='interrupt', action='store_false',
                   help='do not save a checkpoint on SIGINT/SIGTERM')
    p.add_argument('--no_autoscale', dest='autoscale', action='store_false',
                   help='do not scale lr and schedule by global_batch / 8')
    # The Ascend port's flags.
    p.add_argument('--data', default=None,
                   help='dataset root: COCO (train2017/, val2017/, annotations/) or the layout of data.synthetic '
                        'and data.labelme2coco (train/, val/, instances_{train,val}.json); class names come '
                        "from the annotations' categories and the class layers follow")
    p.add_argument('--node_device', default=None,
                   help='cpu, cuda or npu (default: npu if torch_npu imports, else cuda if available, else cpu)')
    p.add_argument('--seed', default=None, type=int, help='seed of torch, numpy, random and the data order')
    p.add_argument('--max_iter', default=None, type=int,
                   help='iterations at batch 8 (default: config); autoscaled like the config value')
    p.add_argument('--local_rank', '--local-rank', default=None, type=int,
                   help='set by torch.distributed.launch; torchrun uses LOCAL_RANK instead')
    # The original's dataset fields, as flags (replace the paths under --data, or name them all).
    for split, what in (('train', 'training'), ('valid', 'validation')):
        p.add_argument(f'--{split}_images', default=None, help=f'folder of the {what} images')
        p.add_argument(f'--{split}_info', default=None, help=f'COCO annotation file of the {what} images')
    p.add_argument('--finetune', default=None, metavar='PATH',
                   help='start a new run from this checkpoint (same backbone): tensors whose name and shape '
                        'match are loaded, the rest (e.g. the class layers for another class count) are '
                        're-initialised; iteration 0, fresh optimizer and schedule')
    # This port's.
    p.add_argument('--amp', action='store_true', help='mixed precision (torch.autocast)')
    add_amp_dtype_flag(p)
    p.add_argument('--log_interval', default=10, type=int, help='print a progress line every N iterations')
    p.add_argument('--max_nonfinite', default=10, type=int,
                   help='stop after this many non-finite losses in a row')
    p.add_argument('--coco_eval', default='pycocotools', choices=COCO_EVAL_BACKENDS,
                   help='COCOeval implementation of the validation mAP (faster: faster-coco-eval)')
    p.add_argument('--tensorboard', action='store_true',
                   help='also write losses, lr, speed, validation mAP (overall and per class), its '
                        'precision-recall and confusion plots and drawn detections to '
                        '<log_folder>/tensorboard/<config name>/ (needs requirements-tensorboard.txt); '
                        'view with: tensorboard --logdir <log_folder>/tensorboard')
    return p


def check_args(args: argparse.Namespace) -> None:
    """Reject flag values that cannot work, before anything is built."""
    positive = ('batch_size', 'save_interval', 'log_interval', 'max_nonfinite')
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.max_iter is not None and args.max_iter < 0:
        raise ValueError(f"--max_iter must be >= 0, got {args.max_iter}")
    if args.num_workers < 0:
        raise ValueError(f"--num_workers must be >= 0, got {args.num_workers}")
    if args.patience < 0:
        raise ValueError(f"--patience must be >= 0, got {args.patience}")
    if args.patience > 0 and args.validation_epoch <= 0:
        raise ValueError(f"--patience {args.patience} counts validations, but --validation_epoch "
                         f"{args.validation_epoch} turns validation off")
    if args.validation_epoch > 0 and args.validation_size < 1:
        raise ValueError(f"--validation_size must be at least 1 when validating, got {args.validation_size}")
    if args.start_iter < -1:
        raise ValueError(f"--start_iter must be -1 or >= 0, got {args.start_iter}")
    check_coco_eval_backend(args.coco_eval)
    if args.finetune is not None:
        if args.resume not in (None, 'auto'):
            raise ValueError(f"--finetune starts a new run and cannot go with --resume {args.resume} "
                             f"(--resume auto restarts an interrupted fine-tune)")
        if not os.path.isfile(args.finetune):
            raise FileNotFoundError(f"--finetune: checkpoint not found: {args.finetune}")
    for name in ('lr', 'momentum', 'decay', 'gamma'):
        value = getattr(args, name)
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError(f"--{name} must be a finite number >= 0, got {value}")


def setup(args: argparse.Namespace, info: Optional[DistInfo] = None) -> Trainer:
    """Everything before the first iteration; raises ConfigError / DeviceError / CheckpointError /
    FileNotFoundError / ValueError for bad input, before any training."""
    check_args(args)
    if args.tensorboard:
        check_tensorboard()
    info = info or dist_info_from_env(local_rank=args.local_rank)
    device = select_device(args.node_device or default_device_type(), info.local_rank)
    if device.type == 'cpu':
        # Tiny gradients make Adam's second moments denormal, and x86 CPUs compute on denormals
        # 10-100x slower; flushing them to zero changes nothing that matters for training.
        torch.set_flush_denormal(True)
    config, sched, annotations = configure(args, info)
    need_val = args.validation_epoch > 0
    check_dataset_files(config.dataset, need_val)
    if info.is_main:
        check_writable_folder(args.save_folder, '--save_folder')
        if args.log or args.tensorboard:
            check_writable_folder(args.log_folder, '--log_folder')

    init_distributed(info, device)
    resume_path = agree_on_resume(args.resume, args.save_folder, config.name, info)
    state = load_training_state(resume_path) if resume_path is not None else None
    # --seed, else the resumed run's, else a random one: rank 0's on every rank, or the shards would overlap.
    seed = args.seed if args.seed is not None else state['seed'] if state is not None else \
        broadcast_from_rank0(int.from_bytes(os.urandom(4), 'little'))
    seed_everything(seed)

    train_set, val_set = build_datasets(config, seed, need_val, annotations)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True

    net = Yolact(config)
    restarts = restart_count()
    if resume_path is not None:
        if info.is_main:
            print(f'{f"torchrun restart {restarts}: " if restarts else ""}Resuming training, loading {resume_path}...')
        net.load_weights(resume_path)
    else:
        if info.is_main and args.resume == 'auto':
            print(f'--resume auto: no complete {config.name} checkpoint in {args.save_folder}: a new run.')
        start_weights(net, config, args, say=print if info.is_main else lambda _: None)
    net.train()
    net.to(device)

    sched_optimizer = build_optimizer(net, sched)
    say = print if info.is_main else None
    # Rank 0's choice everywhere: a CPU probe on each rank could disagree, and DDP needs one dtype.
    amp_dtype = broadcast_from_rank0(autocast_dtype(device, args.amp, args.amp_dtype, notify=say,
                                                    shape=ProbeShape(args.batch_size, config.max_size, training=True)))
    if prefers_channels_last(device, amp_dtype is not None, training=True, notify=say):
        net.to(memory_format=torch.channels_last)  # in place: the optimizer's parameters stay the same
    scaler = grad_scaler(device, amp_dtype)

    iteration, nonfinite_total = 0, 0
    # A resumed run keeps its best validation; a new run or fine-tune starts a record of its own.
    best = resumed_best(state, SavePath.best_path(config.name, args.save_folder)) if resume_path is not None \
        else BestRecord()
    if resume_path is not None:
        iteration, nonfinite_total = restore_training_state(resume_path, state, sched_optimizer, scaler, device,
                                                            say=print if info.is_main else None,
                                                            rank=info.rank, world_size=info.world_size)
    if args.start_iter != -1:
        iteration = args.start_iter

    model = wrap_ddp(NetLoss(net, build_criterion(config), amp_dtype), device, info)
    loader, sampler = resumable_loader(train_set, args.batch_size, args.num_workers, seed, info.world_size, info.rank,
                                       detection_collate, pin_memory=device.type == 'cuda')

    log = None
    if args.log and info.is_main:
        session = {k: v for k, v in vars(args).items()}
        session.update(seed=seed, world_size=info.world_size, device=str(device), lr=sched.lr,
                       max_iter=sched.max_iter, lr_steps=sched.lr_steps, start_iter=iteration,
                       resumed_from=resume_path, restart=restarts)
        log = Log(config.name, args.log_folder, session, overwrite=False)
    tensorboard = TensorBoardWriter(tensorboard_folder(args.log_folder, config.name), purge_step=iteration) \
        if args.tensorboard and info.is_main else None
    return Trainer(args, info, device, config, sched, seed, net, model, sched_optimizer, loader, sampler, val_set,
                   log, scaler=scaler, amp_dtype=amp_dtype, iteration=iteration, nonfinite_total=nonfinite_total,
                   tensorboard=tensorboard, best=best)


def _one_line(err: BaseException) -> str:
    text = ' '.join(str(err).split())
    return text or type(err).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        trainer = setup(args)
        if trainer.info.is_main:
            print(f'Begin training! {trainer.config.name}: iterations {trainer.iteration} -> {trainer.sched.max_iter}, '
                  f'{trainer.info.world_size} process(es) x batch {args.batch_size}, device {trainer.device}, '
                  f'seed {trainer.seed}\n', flush=True)
        return trainer.run()
    except (ConfigError, CheckpointError, CheckpointWriteError, DeviceError, FileNotFoundError, ValueError,
            TrainingError) as err:
        print(f'error: {_one_line(err)}', file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print('error: interrupted; no checkpoint saved', file=sys.stderr, flush=True)
        return 130
    finally:
        shutdown()


if __name__ == '__main__':
    sys.exit(main())
