"""training/tensorboard.py and train.py --tensorboard: the scalars and the prediction grid in event
files (read back with TensorBoard's EventAccumulator), an end-to-end run of the tiny config, and
the one-line error when the tensorboard package is missing."""
import random
import sys

import numpy as np
import pytest
import torch
from test_train import tiny, tiny_args  # noqa: F401 (tiny is a fixture)

pytest.importorskip('tensorboard', reason='optional: pip install -r requirements-tensorboard.txt')

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from training.tensorboard import TensorBoardWriter, draw_predictions, tensorboard_folder  # noqa: E402


def read_events(folder) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={'scalars': 0, 'images': 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str):
    """[(step, value)] of a scalar tag."""
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_writer_records_scalars_and_an_image(tmp_path):
    folder = tensorboard_folder(str(tmp_path / 'logs'), 'tiny_train')
    writer = TensorBoardWriter(folder)
    losses = {'B': 1.5, 'C': 2.25, 'M': 0.5, 'S': 0.125}
    writer.train_step(0, losses, total=4.375, lr=1e-3, img_per_sec=12.5)
    writer.train_step(1, {k: v / 2 for k, v in losses.items()}, total=2.1875, lr=2e-3, img_per_sec=None)
    # Keys as eval.validation_map returns them (ints), and as a JSON log gives them back (strings).
    writer.validation(1, {'box': {'all': 12.5, 50: 30.0, 75: 10.0, 95: 0.0},
                          'mask': {'all': 11.0, '50': 28.0, '75': 9.5}})
    writer.validation(2, None)  # no ground truth: nothing recorded
    grid = np.zeros((16, 32, 3), np.uint8)
    grid[:, 16:, 0] = 255
    writer.image('val/predictions', grid, 1)
    writer.close()

    assert str(tmp_path / 'logs' / 'tensorboard' / 'tiny_train') == folder
    events = read_events(folder)
    tags = events.Tags()
    assert set(tags['scalars']) == {'loss/B', 'loss/C', 'loss/M', 'loss/S', 'loss/total', 'train/lr',
                                    'train/img_per_sec', 'val/box_mAP', 'val/box_AP50', 'val/box_AP75',
                                    'val/mask_mAP', 'val/mask_AP50', 'val/mask_AP75'}
    assert scalars(events, 'loss/C') == [(0, 2.25), (1, 1.125)]
    assert scalars(events, 'loss/total') == [(0, 4.375), (1, 2.1875)]
    assert [s for s, _ in scalars(events, 'train/lr')] == [0, 1]
    assert scalars(events, 'train/lr')[1][1] == pytest.approx(2e-3)
    assert scalars(events, 'train/img_per_sec') == [(0, 12.5)]
    assert scalars(events, 'val/box_mAP') == [(1, 12.5)]
    assert scalars(events, 'val/box_AP50') == [(1, 30.0)]
    assert scalars(events, 'val/mask_AP75') == [(1, 9.5)]
    assert tags['images'] == ['val/predictions']
    image = events.Images('val/predictions')[0]
    assert (image.step, image.width, image.height) == (1, 32, 16)


def test_writer_records_per_class_ap_and_the_plots(tmp_path):
    import cv2
    folder = tensorboard_folder(str(tmp_path / 'logs'), 'tiny_train')
    plots = tmp_path / 'val'
    plots.mkdir()
    picture = np.zeros((40, 60, 3), np.uint8)
    picture[:, :30] = (255, 0, 0)  # blue in BGR: TensorBoard must show it blue (RGB)
    cv2.imwrite(str(plots / 'pr_curve.png'), picture)
    cv2.imwrite(str(plots / 'confusion_matrix.png'), picture[:20])
    writer = TensorBoardWriter(folder)
    classes = [{'name': 'cat', 'category_id': 1, 'instances': 3, 'box': {'AP': 40.0}, 'mask': {'AP': 35.5}},
               {'name': 'dog', 'category_id': 2, 'instances': 0, 'box': None, 'mask': None}]
    writer.validation(7, {'box': {'all': 40.0}, 'mask': {'all': 35.5}, 'classes': classes})
    writer.plots(str(plots), 7)
    writer.close()
    events = read_events(folder)
    tags = events.Tags()
    assert scalars(events, 'val_class_box_AP/cat') == [(7, 40.0)]
    assert scalars(events, 'val_class_mask_AP/cat') == [(7, 35.5)]
    assert not [t for t in tags['scalars'] if 'dog' in t]  # no ground truth: no AP to show
    assert sorted(tags['images']) == ['val/confusion_matrix', 'val/pr_curve']
    shown = events.Images('val/pr_curve')[0]
    assert (shown.step, shown.width, shown.height) == (7, 60, 40)
    decoded = cv2.imdecode(np.frombuffer(shown.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert tuple(decoded[0, 0]) == (255, 0, 0)


def test_writer_creates_nothing_until_the_first_record(tmp_path):
    writer = TensorBoardWriter(str(tmp_path / 'tb'))
    writer.flush()
    writer.close()
    assert not (tmp_path / 'tb').exists()


class _Images:
    """A dataset of two BGR images of different sizes (what COCODetection.pull_image gives)."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 255, (60, 90, 3), dtype=np.uint8),
                       rng.integers(0, 255, (80, 50, 3), dtype=np.uint8)]

    def __len__(self):
        return len(self.images)

    def pull_image(self, index):
        return self.images[index]


def test_draw_predictions_keeps_train_mode_and_the_rng_states(tiny):  # noqa: F811
    from data.config import cfg, set_cfg
    from yolact import Yolact
    set_cfg('tiny_train_config')
    torch.manual_seed(0)
    net = Yolact(cfg)
    net.init_weights(backbone_path=None)
    net.train()
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    grid = draw_predictions(net, _Images(), cfg.dataset.class_names, count=4)
    assert net.training
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]
    # Two tiles (the dataset has only two) of 320 px, side by side with a 4 px gap; RGB uint8.
    assert grid.shape == (320, 644, 3) and grid.dtype == np.uint8


def test_train_with_tensorboard_records_training_and_validation(tiny, tmp_path):  # noqa: F811
    """Two iterations then the validation at the end (RNG and train mode: the test above)."""
    import train
    flags = ('--max_iter', '2', '--validation_epoch', '1', '--validation_size', '2', '--no_log', '--tensorboard')
    assert train.main(tiny_args(tmp_path, *flags)) == 0
    # --no_log: no JSON log; the validation's metrics.json and plots (shown in TensorBoard) are written.
    assert sorted(p.name for p in (tmp_path / 'logs').iterdir()) == ['tensorboard', 'tiny_train_val']
    events = read_events(tmp_path / 'logs' / 'tensorboard' / 'tiny_train')
    tags = events.Tags()
    assert {'loss/B', 'loss/C', 'loss/M', 'loss/S', 'loss/total', 'train/lr', 'train/img_per_sec',
            'val/box_mAP', 'val/mask_mAP', 'val/box_AP50', 'val/mask_AP75'} <= set(tags['scalars'])
    assert [s for s, _ in scalars(events, 'loss/total')] == [0, 1]
    total = [v for _, v in scalars(events, 'loss/total')]
    terms = [sum(vals) for vals in zip(*(
        [v for _, v in scalars(events, t)] for t in tags['scalars'] if t.startswith('loss/') and t != 'loss/total'))]
    assert total == pytest.approx(terms, rel=1e-4)
    assert all(v > 0 for _, v in scalars(events, 'train/img_per_sec'))
    assert [s for s, _ in scalars(events, 'val/box_mAP')] == [2]
    assert all(0 <= v <= 100 for _, v in scalars(events, 'val/mask_mAP'))
    assert [t for t in tags['scalars'] if t.startswith('val_class_mask_AP/')]
    assert {'val/pr_curve', 'val/confusion_matrix'} <= set(tags['images'])
    images = events.Images('val/predictions')
    # The synthetic val set's first 4 images, 320 px tiles with 4 px gaps.
    assert [(i.step, i.width, i.height) for i in images] == [(2, 4 * 320 + 3 * 4, 320)]


def test_missing_tensorboard_is_one_line_error_before_anything_is_built(tiny, tmp_path, monkeypatch,  # noqa: F811
                                                                        capsys):
    import train
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # `import` now raises ImportError
    assert train.main(tiny_args(tmp_path, '--max_iter', '2', '--tensorboard')) == 1
    out, err = capsys.readouterr()
    assert err == ('error: --tensorboard needs the tensorboard package: '
                   'pip install -r requirements-tensorboard.txt\n')
    assert 'Begin training' not in out
    assert not (tmp_path / 'weights').exists() and not (tmp_path / 'logs').exists()
