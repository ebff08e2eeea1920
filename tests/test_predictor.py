"""predictor.py: Predictor and Result on a checkpoint, an exported ONNX / TorchScript file, lists,
streams; the same JSON as eval.py --save_json; labelme files that data.labelme2coco reads back;
two Predictors of different configs side by side; the README's "Use from Python" code."""
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

import eval as eval_script
import export
from data.config import SYNTHETIC_CLASSES, ConfigError, cfg, config_for, set_cfg
from data.labelme2coco import convert
from deploy.inference import InferenceError
from predictor import Predictor, Result
from tests.eval_helpers import register, save_tiny_checkpoint, tiny_config
from utils.checkpoint import CheckpointError, write_classes
from yolact import Yolact

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO = 'yolact_resnet18_synthetic'
# Names unlike the config's, so a test sees where they came from.
FILE_CLASSES = ('disc', 'wedge', 'block', 'spark', 'honeycomb', 'plus')


pytestmark = pytest.mark.usefixtures('restore_cfg')


@pytest.fixture(scope='module')
def demo(tmp_path_factory, synthetic_root):
    """A demo-config checkpoint of random weights (scaled for confident classes and crisp masks)
    with its class list, the same weights without one, and its ONNX and TorchScript exports
    (an int8 file runs through the same onnxruntime path: tests/test_int8.py)."""
    folder = tmp_path_factory.mktemp('predictor')
    torch.manual_seed(0)
    net = Yolact(config_for(DEMO))
    net.init_weights(None)
    with torch.no_grad():
        net.prediction_layers[0].conf_layer.weight.mul_(4)
        net.proto_net[-1].weight.mul_(40)
    ckpt = str(folder / f'{DEMO}_1_10.pth')
    net.save_weights(ckpt)
    write_classes(ckpt, DEMO, FILE_CLASSES, None)
    (folder / 'lone').mkdir()
    lone = str(folder / 'lone' / f'{DEMO}_1_10.pth')
    shutil.copy(ckpt, lone)
    files = SimpleNamespace(ckpt=ckpt, lone=lone, onnx=str(folder / 'demo.onnx'), torchscript=str(folder / 'demo.pt'), folder=folder,
                            image=str(sorted((synthetic_root / 'val').iterdir())[0]), root=synthetic_root)
    try:
        assert export.main(['--trained_model', ckpt, '--output', files.onnx, '--no_check']) == 0
        assert export.main(['--trained_model', ckpt, '--format', 'torchscript', '--output', files.torchscript]) == 0
    finally:
        set_cfg('yolact_base_config')
    return files


@pytest.fixture(scope='module')
def demo_predictor(demo):
    return Predictor(demo.ckpt, score_threshold=0, top_k=5)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else (a & b).sum() / union


def test_checkpoint_with_class_list(demo, demo_predictor):
    before = (cfg.name, cfg.dataset.class_names)
    result = demo_predictor(demo.image)
    image = cv2.imread(demo.image)
    assert isinstance(result, Result) and len(result) == 5
    assert demo_predictor.class_names == FILE_CLASSES and demo_predictor.config_name == DEMO
    assert demo_predictor.device == torch.device('cpu')
    assert result.image_size == image.shape[:2] and result.path == demo.image
    assert result.boxes.shape == (5, 4) and result.labels.dtype == np.int64
    assert result.masks.shape == (5, *image.shape[:2]) and result.masks.dtype == bool
    assert result.names == [FILE_CLASSES[c] for c in result.labels]
    assert list(result.scores) == sorted(result.scores, reverse=True)
    x1, y1, x2, y2 = result.boxes.T
    assert ((0 <= x1) & (x1 <= x2) & (x2 <= image.shape[1]) & (0 <= y1) & (y1 <= y2) & (y2 <= image.shape[0])).all()
    # A mask of any size has its outer contours as [K, 2] point arrays.
    for mask, polygons in zip(result.masks, result.polygons()):
        assert bool(polygons) == (mask.sum() > 4) or mask.sum() <= 4
        assert all(p.ndim == 2 and p.shape[1] == 2 and len(p) >= 3 for p in polygons)
    assert sum(map(len, result.polygons())) >= 3
    drawn = result.plot()
    assert drawn.shape == image.shape and drawn.dtype == np.uint8 and (drawn != image).any()
    saved = result.save(str(demo.folder / 'drawn.png'))
    assert (cv2.imread(saved) == drawn).all()
    assert (cfg.name, cfg.dataset.class_names) == before  # the global config is untouched


def test_lone_checkpoint_config_and_class_overrides(demo, tmp_path):
    lone = Predictor(demo.lone, score_threshold=0, top_k=3)
    assert lone.class_names == SYNTHETIC_CLASSES
    renamed = tmp_path / 'my_model.pth'
    shutil.copy(demo.lone, renamed)
    with pytest.raises(ConfigError, match="cannot infer the config.*pass config="):
        Predictor(renamed)
    named = Predictor(renamed, config=DEMO, classes=list('abcdef'), score_threshold=0, top_k=3)
    result, expected = named(demo.image), lone(demo.image)
    assert named.class_names == tuple('abcdef') and result.names == ['abcdef'[c] for c in expected.labels]
    np.testing.assert_array_equal(result.boxes, expected.boxes)
    with pytest.raises(ConfigError, match='6 classes'):
        Predictor(demo.lone, classes=['one', 'two'])
    with pytest.raises(CheckpointError, match='not found'):
        Predictor(tmp_path / 'missing.pth')


@pytest.mark.parametrize('kind', ['onnx', 'torchscript'])
def test_exported_files_give_the_checkpoints_detections(demo, demo_predictor, kind):
    exported = Predictor(getattr(demo, kind), score_threshold=0, top_k=5)
    assert exported.class_names == FILE_CLASSES and exported.config_name == DEMO
    got, expected = exported(demo.image), demo_predictor(demo.image)
    assert len(got) == len(expected) == 5
    assert got.names == expected.names
    assert np.abs(got.boxes - expected.boxes).max() <= 2
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
    assert min(_mask_iou(a, b) for a, b in zip(got.masks, expected.masks)) >= 0.95
    with pytest.raises(InferenceError, match='amp'):
        Predictor(getattr(demo, kind), amp=True)


def test_list_input_is_batched_and_matches_single_images(demo, demo_predictor):
    image = cv2.imread(demo.image)
    small = cv2.resize(image, (96, 64))
    results = demo_predictor([demo.image, image, small])
    assert [type(r) for r in results] == [Result] * 3 and results[2].image_size == (64, 96)
    single = demo_predictor(small)
    np.testing.assert_array_equal(results[2].boxes, single.boxes)
    np.testing.assert_array_equal(results[0].boxes, results[1].boxes)
    assert results[0].path == demo.image and results[1].path is None
    np.testing.assert_allclose(results[0].scores, results[1].scores, atol=1e-5)
    with pytest.raises(InferenceError, match=r'ndarray\[H, W, 3\] uint8'):
        demo_predictor(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(InferenceError, match='image not found'):
        demo_predictor(str(demo.folder / 'missing.jpg'))


def test_stream_over_a_video_and_a_folder(demo, demo_predictor, tmp_path):
    video = tmp_path / 'clip.mp4'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'mp4v'), 10, (96, 64))
    rng = np.random.default_rng(0)
    for _ in range(3):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    pairs = list(demo_predictor.stream(str(video), batch_size=2))
    assert len(pairs) == 3 and all(r.image_size == (64, 96) and f.shape == (64, 96, 3) for f, r in pairs)
    frame, result = pairs[2]
    np.testing.assert_array_equal(demo_predictor(frame).boxes, result.boxes)

    folder = tmp_path / 'pictures'
    folder.mkdir()
    shutil.copy(demo.image, folder / 'b.jpg')
    cv2.imwrite(str(folder / 'a.png'), frame)
    (folder / 'notes.txt').write_text('not an image')
    assert [Path(r.path).name for _, r in demo_predictor.stream(folder)] == ['a.png', 'b.jpg']
    with pytest.raises(InferenceError, match='video not found'):
        next(demo_predictor.stream(tmp_path / 'missing.mp4'))


def test_to_json_equals_the_cli_save_json(demo, demo_predictor, tmp_path, capsys):
    out = tmp_path / 'out.png'
    assert eval_script.main(['--trained_model', demo.ckpt, '--image', f'{demo.image}:{out}', '--save_json',
                             '--top_k', '5', '--score_threshold', '0', '--node_device', 'cpu']) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / 'out.json').read_text())
    # Through JSON both ways: the file holds what json.dumps makes of the dict.
    assert doc == json.loads(json.dumps(demo_predictor(demo.image).to_json()))
    assert doc['image'] == Path(demo.image).name and len(doc['detections']) == 5
    assert (cv2.imread(str(out)) == demo_predictor(demo.image).plot()).all()
    # An exported file through the CLI: its Predictor's JSON too.
    assert eval_script.main(['--trained_model', demo.torchscript, '--image', f'{demo.image}:{out}', '--save_json',
                             '--top_k', '5', '--score_threshold', '0']) == 0
    assert 'running in TorchScript' in capsys.readouterr().out
    exported = Predictor(demo.torchscript, score_threshold=0, top_k=5)(demo.image).to_json()
    assert json.loads((tmp_path / 'out.json').read_text()) == json.loads(json.dumps(exported))


def test_labelme_round_trip(demo, demo_predictor, tmp_path, capsys):
    """eval.py --save_labelme -> labelme files -> data.labelme2coco: the same instances and classes."""
    src, out = tmp_path / 'in', tmp_path / 'out'
    src.mkdir()
    for path in sorted((demo.root / 'val').iterdir())[:2]:
        shutil.copy(path, src / path.name)
    assert eval_script.main(['--trained_model', demo.ckpt, '--images', f'{src}:{out}', '--save_labelme', '--save_json',
                             '--top_k', '5', '--score_threshold', '0', '--node_device', 'cpu', '--no_bar']) == 0
    assert 'labelme' in capsys.readouterr().out
    expected = {}
    for image in sorted(src.iterdir()):
        doc = json.loads((out / 'labelme' / (image.stem + '.json')).read_text())
        assert doc['imagePath'] == image.name and (out / 'labelme' / image.name).read_bytes() == image.read_bytes()
        assert (doc['imageHeight'], doc['imageWidth']) == cv2.imread(str(image)).shape[:2]
        assert doc['version'] and doc['imageData'] is None
        assert (out / (image.stem + '.json')).is_file()  # --save_json's file is another one
        result = demo_predictor(str(image))
        expected[image.name] = sorted(name for name, polygons in zip(result.names, result.polygons()) if polygons)
        assert {s['label'] for s in doc['shapes']} == set(expected[image.name])
        assert all(s['shape_type'] == 'polygon' and len(s['points']) >= 3 for s in doc['shapes'])
    assert sum(map(len, expected.values())) >= 4

    convert(str(out / 'labelme'), str(tmp_path / 'coco'), val_fraction=0, log=None)
    coco = json.loads((tmp_path / 'coco' / 'instances_train.json').read_text())
    names = {c['id']: c['name'] for c in coco['categories']}
    got = {image['file_name']: sorted(names[a['category_id']] for a in coco['annotations']
                                      if a['image_id'] == image['id']) for image in coco['images']}
    assert got == expected
    assert eval_script.main(['--trained_model', demo.ckpt, '--image', str(src / image.name), '--save_labelme']) == 1
    assert capsys.readouterr().err == ('error: --save_labelme needs --images IN:OUT (it writes OUT/labelme/, '
                                       'beside copies of the inputs)\n')


def test_two_predictors_of_different_configs_interleaved(demo, monkeypatch, tmp_path):
    attr = register(monkeypatch, tiny_config('yolact_predtiny', num_classes=4))
    tiny_ckpt = str(tmp_path / 'yolact_predtiny_1_10.pth')
    save_tiny_checkpoint(tiny_ckpt, attr)
    write_classes(tiny_ckpt, attr, ('ring', 'bar', 'dot'), None)
    set_cfg('yolact_base_config')
    image = cv2.imread(demo.image)

    def run(predictor):
        return json.dumps(predictor(image).to_json())

    alone = {'demo': run(Predictor(demo.ckpt, score_threshold=0, top_k=5)),
             'tiny': run(Predictor(tiny_ckpt, score_threshold=0, top_k=5))}
    tiny = Predictor(tiny_ckpt, score_threshold=0, top_k=5)  # created first this time
    demo_p = Predictor(demo.ckpt, score_threshold=0, top_k=5)
    assert tiny.config.max_size == 64 and demo_p.config.max_size == 160 and len(tiny.class_names) == 3
    assert [run(p) for p in (demo_p, tiny, demo_p, tiny)] == [alone['demo'], alone['tiny']] * 2
    assert alone['demo'] != alone['tiny'] and cfg.name == 'yolact_base'


# ----------------------------------------------------------------------------- README

def _section(text: str, title: str) -> str:
    start = text.index(f'\n## {title}\n')
    end = text.find('\n## ', start + 1)
    return text[start:end if end >= 0 else len(text)]


def test_readme_use_from_python_runs(demo, tmp_path, monkeypatch, capsys):
    """Every python block of README.md's "Use from Python", its file names pointed at the test's
    checkpoint, export (the float32 file where the README names an int8 one: both run through
    onnxruntime alike) and picture."""
    section = _section((REPO_ROOT / 'README.md').read_text(encoding='utf-8'), 'Use from Python')
    blocks = re.findall(r'```python\n(.*?)```', section, re.S)
    assert len(blocks) == 2
    shutil.copy(demo.image, tmp_path / 'photo.jpg')
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        for name, path in (('weights/yolact_base_54_800000.pth', demo.ckpt), ('yolact_base.int8.onnx', demo.onnx)):
            block = block.replace(f"'{name}'", repr(path))
        exec(compile(block, 'README.md', 'exec'), {'__name__': '__readme__'})
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"{DEMO} ('disc', 'wedge', 'block')")
    doc = json.loads((tmp_path / 'photo.json').read_text())
    assert doc['image'] == 'photo.jpg' and len(out) == len(doc['detections']) + 1
    assert cv2.imread(str(tmp_path / 'photo_yolact.png')).shape == cv2.imread(demo.image).shape
