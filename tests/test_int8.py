"""export.py --int8 and eval.py on exported files (deploy/runtime_model.py).

One tiny checkpoint (tests/eval_helpers.py's config at 64 px, random weights) is exported to
float32 and int8 ONNX once for the module; eval.py then runs the .pth and both files on the
synthetic val split. The class names travel from the checkpoint's <stem>.classes.json through the
file's metadata: the registered config's own names are placeholders that eval.py must not use.
"""
import json
import math
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

import eval as eval_script
import export
from data.config import SYNTHETIC_CLASSES, set_cfg, synthetic_dataset
from deploy import exporting, quantize
from deploy.runtime_model import RuntimeYolact, exported_config, open_exported
from evaluation.coco_results import parse_map_table
from tests.eval_helpers import register, save_tiny_checkpoint, tiny_config
from utils.checkpoint import write_classes
from yolact import Yolact

CONFIG_NAME = 'yolact_int8tiny'
PLACEHOLDER_NAMES = tuple(f'placeholder_{i}' for i in range(1, len(SYNTHETIC_CLASSES) + 1))


pytestmark = pytest.mark.usefixtures('restore_cfg')


@pytest.fixture(scope='module')
def exported(tmp_path_factory, synthetic_root):
    """A tiny checkpoint with its classes file, exported to fp32 and int8 (2 calibration images)."""
    patch = pytest.MonkeyPatch()
    config = tiny_config(CONFIG_NAME).copy({
        'dataset': synthetic_dataset.copy({'class_names': PLACEHOLDER_NAMES})})
    attr = register(patch, config)
    folder = tmp_path_factory.mktemp('int8')
    ckpt = str(folder / f'{CONFIG_NAME}_1_10.pth')
    save_tiny_checkpoint(ckpt, attr)
    write_classes(ckpt, attr, SYNTHETIC_CLASSES, {i: i for i in range(1, len(SYNTHETIC_CLASSES) + 1)})
    fp32, int8 = str(folder / 'tiny.onnx'), str(folder / 'tiny.int8.onnx')
    try:
        assert export.main(['--trained_model', ckpt, '--output', fp32]) == 0
        assert export.main(['--trained_model', ckpt, '--output', int8, '--int8', '--calib_data',
                            str(synthetic_root), '--calib_images', '2', '--no_check']) == 0
        yield SimpleNamespace(ckpt=ckpt, fp32=fp32, int8=int8, folder=folder, root=synthetic_root)
    finally:
        patch.undo()
        set_cfg('yolact_base_config')


def _metadata(path: str) -> dict:
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    return json.loads(props['yolact'])


def _eval(argv, capsys):
    rc = eval_script.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_int8_file_is_quantized_and_carries_config_and_classes(exported):
    meta = _metadata(exported.int8)
    assert meta['config'] == CONFIG_NAME and meta['precision'] == 'int8'
    assert meta['class_names'] == list(SYNTHETIC_CLASSES) and meta['category_ids'] == [1, 2, 3, 4, 5, 6]
    assert meta['input_size'] == 64 and meta['calibration_images'] == 2
    assert _metadata(exported.fp32)['precision'] == 'fp32'

    graph = onnx.load(exported.int8).graph
    ops = [node.op_type for node in graph.node]
    assert 'DequantizeLinear' in ops and 'QuantizeLinear' in ops
    # The box-regression convs keep float32 weights; the backbone's are int8.
    weights = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    for output in ('boxes', 'coeffs', 'proto'):  # the layers that make them keep float32 weights
        kept = quantize.float_nodes(onnx.load(exported.fp32), [output])
        float_convs = [n for n in graph.node if n.op_type == 'Conv' and n.name in kept]
        assert float_convs and all(n.input[1] in weights and weights[n.input[1]].data_type == onnx.TensorProto.FLOAT
                                   for n in float_convs), output
    int8_weights = [producers[n.input[1]] for n in graph.node if n.op_type == 'Conv' and n.input[1] in producers]
    assert int8_weights and all(p.op_type == 'DequantizeLinear' for p in int8_weights)


# How far each output of the int8 file may be from the float32 file's, as a share of the float32
# output's largest magnitude, on val images. The box regressions come from float32 layers: only the
# int8 features under them move them (<= 1e-4 here; int8 box layers: ~1e-2). Scores, coefficients
# and prototypes sit on int8 features (~0.02-0.05 here): their bound catches a broken int8 path.
INT8_TOLERANCE = {'boxes': 1e-3, 'scores': 0.1, 'coeffs': 0.1, 'proto': 0.1}


def test_int8_outputs_match_float32_within_tolerance(exported):
    """The int8 file against the float32 one, output by output: a change that quantizes the box
    layers (quantize.FLOAT_OUTPUTS) fails here, one that breaks the int8 path fails on every output."""
    import onnxruntime
    session, meta = open_exported(exported.int8)
    images = quantize.calibration_inputs(str(exported.root), exported_config(meta), 3)
    fp32 = onnxruntime.InferenceSession(exported.fp32, providers=['CPUExecutionProvider'])
    for image in images:
        want = dict(zip(exporting.OUTPUT_NAMES, fp32.run(list(exporting.OUTPUT_NAMES), {exporting.INPUT_NAME: image})))
        got = dict(zip(exporting.OUTPUT_NAMES, session.run(list(exporting.OUTPUT_NAMES), {exporting.INPUT_NAME: image})))
        for name, tolerance in INT8_TOLERANCE.items():
            error = float(np.abs(got[name] - want[name]).max() / np.abs(want[name]).max())
            assert error <= tolerance, (name, error)


def test_float_nodes_stop_at_the_prediction_convs(exported):
    model = onnx.load(exported.fp32)
    weights = {init.name: init for init in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    anchors = 3  # tiny_config: one scale, three aspect ratios per level
    for output, channels in (('boxes', 4 * anchors), ('coeffs', 8 * anchors), ('proto', 8)):
        convs = [nodes[name] for name in quantize.float_nodes(model, [output]) if nodes[name].op_type == 'Conv']
        shapes = {tuple(weights[c.input[1]].dims)[0] for c in convs if c.input[1] in weights}
        assert convs and shapes <= {channels}, (output, shapes)


def test_eval_through_the_int8_file_uses_its_metadata(exported, capsys, tmp_path):
    argv = ['--trained_model', exported.int8, '--val_data', str(exported.root), '--no_bar']
    rc, out, err = _eval(argv, capsys)
    assert rc == 0, err
    assert f'Config {CONFIG_NAME} and 6 classes (circle' in out and 'int8, 64 px' in out
    printed = parse_map_table(out)
    assert set(printed) == {'box', 'mask'}
    assert all(math.isfinite(v) for task in printed.values() for v in task.values())

    # Drawn pictures through the same file: class names from the metadata.
    picture = tmp_path / 'in.png'
    import cv2
    cv2.imwrite(str(picture), cv2.imread(str(next((exported.root / 'val').iterdir()))))
    rc, out, err = _eval(['--trained_model', exported.int8, '--image', f'{picture}:{tmp_path / "out.png"}',
                          '--save_json', '--top_k', '3'], capsys)
    assert rc == 0, err
    drawn = json.loads((tmp_path / 'out.json').read_text())
    names = [d['class_name'] for d in drawn['detections']]
    assert names and set(names) <= set(SYNTHETIC_CLASSES)

    rc, out, err = _eval(['--trained_model', exported.int8, '--val_data', str(exported.root),
                          '--benchmark', '--max_images', '2', '--no_bar'], capsys)
    assert rc == 0 and 'fps' in out, err


def test_fp32_file_scores_the_same_map_as_the_checkpoint(exported, capsys, tmp_path):
    scores = {}
    for name, path in (('pth', exported.ckpt), ('onnx', exported.fp32)):
        boxes = tmp_path / f'{name}.json'
        rc, out, err = _eval(['--trained_model', path, '--val_data', str(exported.root), '--no_bar',
                              '--node_device', 'cpu', '--output_coco_json', '--bbox_det_file', str(boxes),
                              '--mask_det_file', str(tmp_path / f'{name}_mask.json')], capsys)
        assert rc == 0, err
        scores[name] = (parse_map_table(out), json.loads(boxes.read_text()))
    (pth_map, pth_dets), (onnx_map, onnx_dets) = scores['pth'], scores['onnx']
    assert len(pth_dets) > 10 and len(onnx_dets) == len(pth_dets)
    np.testing.assert_allclose([d['score'] for d in onnx_dets], [d['score'] for d in pth_dets], atol=1e-4)
    np.testing.assert_allclose([d['bbox'] for d in onnx_dets], [d['bbox'] for d in pth_dets], atol=0.05)
    for task in ('box', 'mask'):
        for key, value in pth_map[task].items():
            assert abs(onnx_map[task][key] - value) <= 0.02, (task, key)


def test_runtime_model_runs_any_batch_like_the_network(exported):
    """A file exported for batch 1 takes a batch of 3 (in pieces) and gives the network's detections."""
    session, meta = open_exported(exported.fp32)
    config = exported_config(meta)
    runtime = RuntimeYolact(session, meta, config)
    net = Yolact(config)
    net.load_weights(exported.ckpt)
    net.eval()
    for detect in (runtime.detect, net.detect):
        detect.use_fast_nms = True
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, expected = runtime(images), net(images)
    assert len(got) == 3 and got[0]['net'] is runtime
    for g, e in zip(got, expected):
        for key in ('class', 'score', 'box', 'mask', 'proto'):
            torch.testing.assert_close(g['detection'][key], e['detection'][key], atol=1e-4, rtol=0)


def test_bad_files_are_one_line_errors(exported, tmp_path, capsys):
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(b'this is not a protobuf' * 10)
    rc, _, err = _eval(['--trained_model', str(corrupt), '--no_bar'], capsys)
    assert rc == 1 and err.startswith('error: ') and err.strip().count('\n') == 0
    assert 'cannot load it as an ONNX model' in err

    bare = onnx.load(exported.fp32)
    del bare.metadata_props[:]
    plain = tmp_path / 'plain.onnx'
    onnx.save(bare, str(plain))
    rc, _, err = _eval(['--trained_model', str(plain), '--no_bar'], capsys)
    assert rc == 1 and err.strip().count('\n') == 0 and "no 'yolact' metadata" in err

    rc, _, err = _eval(['--trained_model', exported.fp32, '--compile', '--no_bar'], capsys)
    assert rc == 1 and '--compile applies to a .pth checkpoint' in err


def test_int8_flag_errors(exported, tmp_path, capsys):
    base = ['--trained_model', exported.ckpt, '--output', str(tmp_path / 'x.onnx')]
    assert export.main(base + ['--int8']) == 1
    assert '--int8 needs --calib_data' in capsys.readouterr().err
    assert export.main(base + ['--calib_images', '3']) == 1
    assert 'apply to --int8 only' in capsys.readouterr().err
    assert export.main(base + ['--int8', '--calib_data', str(tmp_path / 'nowhere')]) == 1
    assert 'folder not found' in capsys.readouterr().err
    assert export.main(base + ['--int8', '--format', 'torchscript', '--calib_data', str(tmp_path)]) == 1
    assert '--format onnx only' in capsys.readouterr().err


def test_bench_sets_the_runtime_rows_beside_the_originals_fp32_row():
    """benchmarks/bench.py: the onnxruntime rows are compared with the original's PyTorch float32
    row, and the int8 row's rate is measured against the int8 matmul rate."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
    import bench

    def record(row, impl, seconds, precision=None):
        return {'row': row, 'impl': impl, 'unit': 'ms/img', 'amp': None, 'threads': 2, 'seconds': seconds,
                'times': [1000 * t for t in seconds], 'median': 1000 * seconds[0], 'min': 1000 * seconds[0],
                'flops': 8e9, 'precision': precision}

    rows = [record('runtime_base_int8', 'port', [0.3], 'int8'), record('runtime_base_fp32', 'port', [0.8], 'fp32'),
            record('eval_base_fp32', 'original', [1.0])]
    for rec in rows:
        bench.add_rates(rec, {'float32': 20.0, 'int8': 80.0})
    assert rows[0]['pct_of_matmul'] == pytest.approx(100 * 8 / 0.3 / 80)
    assert rows[1]['pct_of_matmul'] == pytest.approx(100 * 8 / 0.8 / 20)
    lines = bench.format_comparison(rows).splitlines()[2:]
    assert {line.split()[0]: float(line.split()[4]) for line in lines} == {'runtime_base_int8': 0.3,
                                                                            'runtime_base_fp32': 0.8}
    assert set(bench.RUNTIME_ROWS) <= set(bench.ROWS) and not set(bench.RUNTIME_ROWS[1:]) & set(bench.DEFAULT_ROWS)
