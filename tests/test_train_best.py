"""train.py keeps <config>_best.pth (the best validation mask mAP, ties by box mAP), stops under
--patience, keeps the record across --resume, starts a new one with --finetune; and a dataset with
no validation split trains without validation.

The validations return a scripted sequence of mAPs (training.trainer.validation_map replaced), so which
checkpoint is the best and where training stops are known in advance."""
import json

import torch
from test_train import tiny, tiny_args  # noqa: F401 (tiny: a fixture)

import training.trainer
from training.state import BestRecord, resumed_best
from utils.checkpoint import config_name_from_checkpoint, load_file, read_classes


def script_validations(monkeypatch, maps):
    """Validations return (box, mask) mAPs from `maps` in turn; returns the iterations validated."""
    seen = []

    def fake(net, dataset, max_images, amp_dtype=None, coco_eval='pycocotools', results_dir=None, iteration=None):
        box, mask = maps[len(seen)]
        seen.append(iteration)
        return {'box': {'all': box}, 'mask': {'all': mask}}

    monkeypatch.setattr(training.trainer, 'validation_map', fake)
    return seen


def best_state(weights):
    return load_file(str(weights / 'tiny_train_best.state.pt'))


def test_best_record_ranks_by_mask_then_box():
    best = BestRecord()
    assert best.offer(10, 1, box=5.0, mask=10.0) and best.iteration == 10
    assert not best.offer(20, 2, box=9.0, mask=9.0) and best.stale == 1
    assert not best.offer(30, 3, box=5.0, mask=10.0) and best.stale == 2  # a full tie is no better
    assert best.offer(40, 4, box=6.0, mask=10.0) and (best.iteration, best.stale) == (40, 0)  # box breaks the tie
    assert BestRecord.from_dict(best.as_dict()) == best and BestRecord().as_dict() is None
    boxes_only = BestRecord()
    assert boxes_only.offer(1, 0, box=3.0, mask=None) and boxes_only.offer(2, 0, box=4.0, mask=None)


def test_best_checkpoint_patience_resume_and_finetune(tiny, tmp_path, monkeypatch, capsys):
    import train
    weights = tmp_path / 'weights'
    # 8 images at batch 4: an epoch is 2 iterations, validations after epochs 1, 2, 3 (iterations 4, 6, 8).
    flags = ('--batch_size', '4', '--validation_epoch', '1', '--validation_size', '2', '--save_interval', '100')
    seen = script_validations(monkeypatch, [(5.0, 10.0), (4.0, 20.0), (30.0, 15.0)])
    assert train.main(tiny_args(tmp_path, *flags, '--max_iter', '20', '--patience', '1')) == 0
    out = capsys.readouterr().out
    assert seen == [4, 6, 8]  # rose, rose, fell: one validation without improvement stops it
    assert 'New best validation at iteration 4: mask mAP 10.00, box mAP 5.00' in out
    assert 'New best validation at iteration 6: mask mAP 20.00, box mAP 4.00' in out
    assert 'New best validation at iteration 8' not in out
    assert 'Stopping at iteration 8: 1 validation(s) in a row without a better mask mAP' in out
    assert 'Training finished at iteration 8' in out and 'Best validation: iteration 6, mask mAP 20.00' in out
    state = best_state(weights)
    assert state['iteration'] == 6 and state['best']['mask'] == 20.0
    assert read_classes(str(weights / 'tiny_train_best.pth')) is not None  # its class list beside it
    # eval.py and export.py find its config from the name, as for the other checkpoints.
    assert config_name_from_checkpoint(str(weights / 'tiny_train_best.pth')) == 'tiny_train_config'
    final = load_file(str(weights / 'tiny_train_3_8.state.pt'))
    assert final['best'] == {'iteration': 6, 'epoch': 2, 'box': 4.0, 'mask': 20.0, 'stale': 1}
    best_weights = torch.load(str(weights / 'tiny_train_best.pth'), weights_only=True)
    final_weights = torch.load(str(weights / 'tiny_train_3_8.pth'), weights_only=True)
    assert any(not torch.equal(best_weights[k], final_weights[k]) for k in best_weights)

    # A run stopped after a new best but before its next checkpoint resumes from a state with an
    # older record: the best file's record wins, so a worse validation cannot replace that file.
    older = dict(final, best={'iteration': 4, 'epoch': 1, 'box': 5.0, 'mask': 10.0, 'stale': 0})
    assert resumed_best(older, str(weights / 'tiny_train_best.pth')).iteration == 6
    assert resumed_best(final, str(weights / 'missing_best.pth')).iteration == 6

    # --resume latest takes the iteration-8 checkpoint (not the best copy) and keeps the record:
    # 18 < 20 is no new best, so the best copy stays the iteration-6 one.
    seen = script_validations(monkeypatch, [(50.0, 18.0)])
    assert train.main(tiny_args(tmp_path, *flags, '--max_iter', '10', '--resume', 'latest')) == 0
    out = capsys.readouterr().out
    assert 'Resuming training, loading' in out and 'tiny_train_3_8.pth' in out and seen == [10]
    assert 'New best' not in out and 'Best validation: iteration 6' in out
    assert best_state(weights)['iteration'] == 6

    # A fine-tune is a new run: its first validation is its best, however low.
    seen = script_validations(monkeypatch, [(1.0, 1.0)])
    assert train.main(tiny_args(tmp_path, *flags, '--max_iter', '2', '--finetune',
                                str(weights / 'tiny_train_4_10.pth'))) == 0
    out = capsys.readouterr().out
    assert seen == [2] and 'New best validation at iteration 2: mask mAP 1.00' in out
    assert best_state(weights)['iteration'] == 2


def test_patience_must_be_usable(tiny, tmp_path, capsys):
    import train
    assert train.main(tiny_args(tmp_path, '--patience', '-1')) == 1
    assert capsys.readouterr().err.strip() == 'error: --patience must be >= 0, got -1'
    assert train.main(tiny_args(tmp_path, '--patience', '2')) == 1  # tiny_args: --validation_epoch -1
    assert capsys.readouterr().err.strip() == \
        'error: --patience 2 counts validations, but --validation_epoch -1 turns validation off'


def test_dataset_without_val_split_trains_without_validation(tiny, tmp_path, capsys):  # noqa: F811
    """labelme2coco --val_fraction 0 puts everything in train; train.py --data then says there is no
    validation split and trains (eval.py can still score the training split by explicit paths)."""
    import train
    from data.labelme2coco import main as labelme2coco
    from data.synthetic import generate_labelme
    src, out = tmp_path / 'labelme', tmp_path / 'all_train'
    generate_labelme(str(src), 4, 1, seed=1, size=96, workers=1, progress=False)
    assert labelme2coco([str(src), str(out), '--val_fraction', '0']) == 0
    assert not (out / 'instances_val.json').exists() and (out / 'instances_train.json').exists()
    capsys.readouterr()
    flags = tiny_args(tmp_path, '--data', str(out), '--max_iter', '2', '--validation_epoch', '1')
    assert train.main(flags) == 0
    printed = capsys.readouterr().out
    assert f"{out} has no validation split ({out / 'instances_val.json'} not found): training without " \
           f"validation." in printed
    assert 'Computing validation mAP' not in printed and 'Training finished at iteration 2' in printed
    with open(out / 'instances_train.json') as f:
        names = [c['name'] for c in json.load(f)['categories']]
    assert read_classes(str(tmp_path / 'weights' / 'tiny_train_0_2.pth'))[0] == tuple(names)
