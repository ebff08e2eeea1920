"""Issue 6: the README's first command, shortened, end to end through the same script."""
import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np

from data.config import SYNTHETIC_CLASSES

REPO = Path(__file__).resolve().parents[1]


def run_demo(tmp_path, **env):
    settings = dict(DEMO_ITERS='4', DEMO_TRAIN='8', DEMO_VAL='4', DEMO_BATCH='4', DEMO_WORKERS='0',
                    DEMO_DATA=str(tmp_path / 'data'), DEMO_OUT=str(tmp_path / 'out'), **env)
    return subprocess.run(['bash', str(REPO / 'run_demo.sh')], cwd=str(REPO), env={**os.environ, **settings},
                          capture_output=True, text=True, timeout=900)


def test_short_demo_writes_plot_predictions_and_map(tmp_path):
    proc = run_demo(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / 'out'
    for step in ('1/5', '2/5', '3/5', '4/5', '5/5'):
        assert f'==> {step}' in proc.stdout
    assert 'Demo finished' in proc.stdout and str(out / 'loss_map.png') in proc.stdout

    plot = cv2.imread(str(out / 'loss_map.png'))
    assert plot is not None and plot.shape[1] >= 800 and plot.std() > 10
    grid = cv2.imread(str(out / 'predictions.png'))
    assert grid is not None and min(grid.shape[:2]) >= 256
    # The tiles are the val images (textured, coloured), not a blank canvas.
    assert grid.std() > 20 and len(np.unique(grid.reshape(-1, 3), axis=0)) > 1000
    assert len(list((out / 'predictions').glob('*.png'))) == 4

    table = (out / 'eval.txt').read_text()
    assert 'box' in table and 'mask' in table and 'Average Precision' in table
    metrics = json.loads((out / 'eval' / 'metrics.json').read_text())
    assert [c['name'] for c in metrics['classes']] == list(SYNTHETIC_CLASSES)
    # The closing summary's mAP is metrics.json's.
    assert f"box mAP {metrics['box']['AP']}, mask mAP {metrics['mask']['AP']} over 4 images" in proc.stdout
    for picture in ('pr_curve.png', 'confusion_matrix.png'):
        assert cv2.imread(str(out / 'eval' / picture)) is not None
    assert list((out / 'weights').glob('yolact_resnet18_synthetic_*.pth'))
    assert (out / 'logs' / 'yolact_resnet18_synthetic.log').stat().st_size > 0

    # Running it again reuses the environment, the dataset and the finished training run.
    again = run_demo(tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert 'environment .venv is up to date' in again.stdout and 'already holds this dataset' in again.stdout
    assert 'nothing to train' in again.stdout
    assert 'found a previous run' in again.stdout
    # ... and shows the evaluation and pictures of that checkpoint instead of making them again.
    assert 'found the evaluation of this checkpoint' in again.stdout and table in again.stdout
    assert 'found the plot and pictures of this checkpoint' in again.stdout
    assert (out / 'eval.txt').read_text() == table
