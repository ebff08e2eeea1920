"""A user's own data end to end: labelme -> COCO -> train through --data and the explicit path flags,
classes from the annotations, the class list beside each checkpoint (eval.py and export.py need no
class flags), a lone .pth, and --finetune across class counts."""
import base64
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_train import TINY_CONFIG, make_tiny_config, parse, tiny, tiny_args  # noqa: F401 (tiny: a fixture)

import data.config as config_module
from data.coco import DatasetFormatError, DatasetPaths, dataset_from_annotations, read_categories
from data.config import cfg, set_cfg
from data.labelme2coco import convert
from data.synthetic import TRANSFER_CLASSES, generate_labelme
from utils.checkpoint import load_state_dict_file, read_classes

NAMES = tuple(sorted(TRANSFER_CLASSES))  # labelme2coco sorts label names: ids 1..3


def _shape(label, points, shape_type='polygon', group_id=None, mask=None) -> dict:
    return {'label': label, 'points': points, 'group_id': group_id, 'shape_type': shape_type, 'flags': {},
            'mask': mask}


def _labelme(path, shapes, image_path, height, width) -> None:
    path.write_text(json.dumps({'version': '5.4.1', 'flags': {}, 'shapes': shapes, 'imagePath': image_path,
                                'imageData': None, 'imageHeight': height, 'imageWidth': width}))


@pytest.fixture(scope='module')
def labelme_root(tmp_path_factory):
    """A 3-class COCO dataset converted from labelme files: 8 images of the synthetic transfer variant,
    one hand-annotated image (rectangle, circle, mask shape, two polygons sharing a group_id), an
    EXIF-rotated JPEG, and a broken file."""
    src = tmp_path_factory.mktemp('labelme')
    generate_labelme(str(src), 6, 2, seed=1, size=96, workers=1, progress=False)
    canvas = np.full((96, 96, 3), 200, np.uint8)
    cv2.imwrite(str(src / 'hand.png'), canvas)
    box_mask = np.zeros((10, 12), np.uint8)
    box_mask[2:8, 3:10] = 255
    png = base64.b64encode(cv2.imencode('.png', box_mask)[1].tobytes()).decode()
    _labelme(src / 'hand.json', [
        _shape('tile', [[10, 10], [30, 25]], 'rectangle'),
        _shape('coin', [[60, 60], [60, 70]], 'circle'),
        _shape('badge', [[40, 5], [51, 14]], 'mask', mask=png),
        _shape('badge', [[5, 50], [15, 50], [15, 60]], group_id=4),
        _shape('badge', [[20, 50], [30, 50], [30, 60]], group_id=4),
    ], 'hand.png', 96, 96)
    upright = np.full((96, 64), 30, np.uint8)
    upright[10:40, 8:40] = 230
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown upright
    Image.fromarray(np.ascontiguousarray(np.rot90(upright))).convert('RGB').save(src / 'photo.jpg', exif=exif)
    _labelme(src / 'photo.json', [_shape('tile', [[8, 10], [40, 40]], 'rectangle')], 'photo.jpg', 96, 64)
    (src / 'broken.json').write_text('{"shapes": [')
    root = tmp_path_factory.mktemp('own') / 'coco'
    report = convert(str(src), str(root), val_fraction=0.3, seed=0, log=None)
    assert [name for name, _ in report.skipped_files] == ['broken.json']
    return root


def _paths(root) -> DatasetPaths:
    return DatasetPaths(str(root / 'train'), str(root / 'instances_train.json'), str(root / 'val'),
                        str(root / 'instances_val.json'))


def _checkpoint(folder):
    """The one <config>_<epoch>_<iter>.pth in `folder` (a run that validated also keeps <config>_best.pth)."""
    from utils.functions import SavePath
    (path,) = sorted(p for p in folder.glob('*.pth') if not SavePath.is_best(str(p)))
    return path


def test_classes_come_from_the_categories_in_id_order(tmp_path):
    info = tmp_path / 'a.json'
    info.write_text(json.dumps({'categories': [{'id': 90, 'name': 'z'}, {'id': 5, 'name': 'y'},
                                               {'id': 17, 'name': 'x'}]}))
    paths = DatasetPaths('t', str(info), 'v', str(info))
    dataset = dataset_from_annotations(paths)
    assert dataset.class_names == ('y', 'x', 'z') and dataset.label_map == {5: 1, 17: 2, 90: 3}
    other = tmp_path / 'b.json'
    other.write_text(json.dumps({'categories': [{'id': 5, 'name': 'y'}, {'id': 17, 'name': 'w'}]}))
    with pytest.raises(DatasetFormatError) as err:
        dataset_from_annotations(DatasetPaths('t', str(info), 'v', str(other)))
    message = str(err.value)
    assert '\n' not in message and str(info) in message and str(other) in message and "'x'" in message
    other.write_text(json.dumps({'categories': [{'id': 5, 'name': 'y'}, {'id': 5, 'name': 'w'}]}))
    with pytest.raises(DatasetFormatError, match='listed twice'):
        read_categories(str(other))
    other.write_text(json.dumps({'images': []}))
    with pytest.raises(DatasetFormatError, match="no 'categories'"):
        read_categories(str(other))


def test_labelme_data_trains_and_evaluates_with_no_class_flags(tiny, labelme_root, tmp_path, capsys):
    import eval as eval_script
    import train
    from deploy.exporting import build_exportable, export_metadata

    # Through --data: three classes from the annotations, class layers of 3 + 1.
    assert train.main(tiny_args(tmp_path / 'a', '--data', str(labelme_root), '--max_iter', '2')) == 0
    out = capsys.readouterr().out
    assert f"Classes from {labelme_root / 'instances_train.json'}: 3 classes ({', '.join(NAMES)})" in out
    assert 'num_classes 4 (the config had 7)' in out
    ckpt = _checkpoint(tmp_path / 'a' / 'weights')
    assert read_classes(str(ckpt)) == (NAMES, {1: 1, 2: 2, 3: 3})
    assert load_state_dict_file(str(ckpt))['semantic_seg_conv.weight'].shape[0] == 3

    # Through the explicit flags, validating on the converted val split.
    paths = _paths(labelme_root)
    flags = [f'--{field}={getattr(paths, field)}' for field in DatasetPaths._fields]
    assert train.main(tiny_args(tmp_path / 'b', *flags, '--max_iter', '2', '--validation_epoch', '1',
                                '--validation_size', '2')) == 0
    out = capsys.readouterr().out
    assert 'Validation (epoch' in out and 'box mAP' in out
    assert read_classes(str(_checkpoint(tmp_path / 'b' / 'weights')))[0] == NAMES
    assert read_classes(str(tmp_path / 'b' / 'weights' / 'tiny_train_best.pth'))[0] == NAMES

    # eval.py: the config from the file name, the classes from the file beside it.
    results = tmp_path / 'results'
    assert eval_script.main(['--trained_model', str(ckpt), '--node_device', 'cpu', '--score_threshold', '0',
                             '--top_k', '3', '--images', f"{labelme_root / 'val'}:{results}", '--save_json',
                             '--save_masks']) == 0
    assert f'Classes from {ckpt.stem}.classes.json: 3 classes' in capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in sorted(results.glob('*.json'))]
    assert len(records) == len(list((labelme_root / 'val').iterdir())) > 0
    names = {d['class_name'] for r in records for d in r['detections']}
    assert names and names <= set(NAMES)
    for record in records:
        ids = cv2.imread(str(results / (record['image'].rsplit('.', 1)[0] + '_instances.png')), cv2.IMREAD_UNCHANGED)
        assert ids.shape == (record['height'], record['width']) and ids.max() <= len(record['detections'])

    # mAP on the converted data; the default synthetic data (6 other classes) is refused in one line.
    assert eval_script.main(['--trained_model', str(ckpt), '--node_device', 'cpu', '--data', str(labelme_root),
                             '--no_bar']) == 0
    assert 'mAP over' in capsys.readouterr().out
    assert eval_script.main(['--trained_model', str(ckpt), '--node_device', 'cpu', '--val_data',
                             os.path.dirname(tiny.valid_images)]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'lists 6 classes' in err and 'the model predicts 3 classes' in err

    # export.py takes the same class list into the exported file's metadata.
    config = build_exportable(str(ckpt)).net.config
    assert export_metadata(config)['class_names'] == list(NAMES) and config.num_classes == 4

    # A lone .pth (no class list beside it): the class count from its tensors, generic names.
    lone = tmp_path / 'lone' / ckpt.name
    lone.parent.mkdir()
    shutil.copy(ckpt, lone)
    assert eval_script.main(['--trained_model', str(lone), '--node_device', 'cpu', '--score_threshold', '0',
                             '--image', f"{labelme_root / 'val' / records[0]['image']}:{tmp_path / 'lone.png'}",
                             '--save_json']) == 0
    assert 'its class layers hold 3 classes, not the config\'s 6; generic names class_1..class_3' in \
        capsys.readouterr().out
    detections = json.loads((tmp_path / 'lone.json').read_text())['detections']
    assert {d['class_name'] for d in detections} <= {'class_1', 'class_2', 'class_3'}


def test_train_and_val_categories_that_disagree_are_one_line(tiny, labelme_root, tmp_path, capsys):
    import train
    paths = _paths(labelme_root)
    rc = train.main(tiny_args(tmp_path, '--train_images', paths.train_images, '--train_info', paths.train_info,
                              '--valid_images', tiny.valid_images, '--valid_info', tiny.valid_info,
                              '--validation_epoch', '1'))
    err = capsys.readouterr().err
    assert rc == 1 and err.count('\n') == 1 and paths.train_info in err and tiny.valid_info in err
    assert train.main(tiny_args(tmp_path, '--train_info', paths.train_info)) == 1
    assert 'needs --train_images too' in capsys.readouterr().err
    assert not (tmp_path / 'weights').exists() or not any((tmp_path / 'weights').iterdir())


def _save_random_model(path, config) -> dict:
    from yolact import Yolact
    set_cfg(config)
    net = Yolact(cfg)
    net.init_weights(backbone_path=None)
    for tensor in net.state_dict().values():  # values a fresh init would not give
        if tensor.is_floating_point():
            tensor.uniform_(-1, 1)
    net.save_weights(str(path))
    return load_state_dict_file(str(path))


FRESH = ['prediction_layers.0.conf_layer.bias', 'prediction_layers.0.conf_layer.weight',
         'semantic_seg_conv.bias', 'semantic_seg_conv.weight']


def test_finetune_from_an_81_class_checkpoint_onto_3_classes(tiny, labelme_root, tmp_path, monkeypatch, capsys):
    import train
    monkeypatch.setattr(config_module, 'tiny81_config', make_tiny_config(
        tiny, name='tiny81', dataset=config_module.coco2017_dataset, num_classes=81), raising=False)
    source = _save_random_model(tmp_path / 'tiny81_54_800000.pth', 'tiny81_config')
    assert source['prediction_layers.0.conf_layer.weight'].shape[0] == 3 * 81

    trainer = train.setup(parse(*tiny_args(tmp_path, '--data', str(labelme_root), '--finetune',
                                           str(tmp_path / 'tiny81_54_800000.pth'))))
    own = trainer.net.state_dict()
    assert trainer.iteration == 0 and not trainer.optimizer.state
    assert f'loaded {len(own) - 4} tensors, re-initialised 4 ({", ".join(FRESH)})' in capsys.readouterr().out
    for name, tensor in own.items():
        if name in FRESH:
            # 3 anchors x (3 classes + background), or 3 segmentation channels; biases start at zero.
            assert tensor.shape[0] in (12, 3) and tensor.shape != source[name].shape
            assert name.endswith('weight') or not tensor.any()
        else:
            assert torch.equal(tensor, source[name]), name


def test_finetune_of_yolact_base_keeps_all_but_the_class_layers(tmp_path):
    """The published 81-class yolact_base layout onto a 3-class dataset (random weights in its shapes)."""
    from yolact import Yolact
    saved = cfg.copy()
    try:
        source = _save_random_model(tmp_path / 'yolact_base_54_800000.pth', 'yolact_base_config')
        set_cfg('yolact_base_config')
        cfg.num_classes = 4
        net = Yolact(cfg)
        net.init_weights(backbone_path=None)
        loaded, fresh = net.load_finetune_weights(str(tmp_path / 'yolact_base_54_800000.pth'))
    finally:
        cfg.replace(saved)
    assert fresh == FRESH and len(loaded) == len(source) - 4
    own = net.state_dict()
    assert all(torch.equal(own[name], source[name]) for name in loaded)


def test_finetune_errors_are_one_line(tiny, tmp_path, monkeypatch, capsys):
    import train
    deeper = make_tiny_config(tiny).backbone.copy({'args': ([1, 1, 2, 1], [0, 0, 0, 0], 1, [],
                                                             config_module.BasicBlock)})
    monkeypatch.setattr(config_module, 'other_backbone_config',
                        make_tiny_config(tiny, name='other_backbone', backbone=deeper), raising=False)
    _save_random_model(tmp_path / 'other.pth', 'other_backbone_config')
    assert train.main(tiny_args(tmp_path, '--finetune', str(tmp_path / 'other.pth'))) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'another backbone' in err and '--finetune' in err
    assert not (tmp_path / 'weights').exists() or not list((tmp_path / 'weights').glob('*.pth'))
    assert train.main(tiny_args(tmp_path, '--finetune', str(tmp_path / 'other.pth'), '--resume', 'latest')) == 1
    assert 'cannot go with --resume latest' in capsys.readouterr().err
    assert train.main(tiny_args(tmp_path, '--finetune', str(tmp_path / 'missing.pth'))) == 1
    assert 'checkpoint not found' in capsys.readouterr().err


def test_finetune_with_resume_auto_continues_its_own_run(tiny, tmp_path, capsys):
    import train
    from yolact import Yolact
    set_cfg(TINY_CONFIG)
    Yolact(cfg).save_weights(str(tmp_path / 'source.pth'))
    argv = ['--finetune', str(tmp_path / 'source.pth'), '--resume', 'auto']
    assert train.main(tiny_args(tmp_path, *argv, '--max_iter', '2')) == 0
    assert 'Fine-tuning from' in capsys.readouterr().out
    assert train.main(tiny_args(tmp_path, *argv, '--max_iter', '3')) == 0  # the job, restarted
    out = capsys.readouterr().out
    assert 'Resuming training' in out and 'Fine-tuning from' not in out
    assert (tmp_path / 'weights' / 'tiny_train_0_3.pth').is_file()
