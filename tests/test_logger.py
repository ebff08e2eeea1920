import math

import cv2
import numpy as np

from utils.logger import Log, main, plot_log, read_entries, training_curves


def write_log(folder):
    log = Log('demo', str(folder), session_data={'config': 'demo'})
    for it in range(30):
        log.log('train', loss={'B': 3.0 / (it + 1), 'C': 2.0, 'T': 5.0 / (it + 1)}, iter=it, finite=True)
    log.log('val', {'box': {'all': 12.5, 50: 30.0}, 'mask': {'all': 10.0}}, iter=29)
    # a resumed session repeats iteration 29 and goes on
    log = Log('demo', str(folder))
    log.log('train', loss={'B': 0.01, 'C': 1.0, 'T': 1.01}, iter=29, finite=True)
    log.log('train', loss={'B': float('nan'), 'C': 1.0, 'T': float('nan')}, iter=30, finite=False)
    log.log('val', {'box': {'all': 40.0}, 'mask': {'all': 35.5}}, iter=31)
    return log.log_path


def test_sessions_are_numbered_and_curves_merged(tmp_path):
    path = write_log(tmp_path)
    assert [e['session'] for e in read_entries(path, 'session')] == [0, 1]
    curves = training_curves(path)
    assert curves['iters'] == list(range(30))  # the non-finite step is left out
    assert curves['losses']['B'][29] == 0.01  # the resumed session's value wins
    assert list(curves['losses']) == ['B', 'C', 'T']
    assert curves['val_iters'] == [29, 31]
    assert curves['box_map'] == [12.5, 40.0] and curves['mask_map'] == [10.0, 35.5]


def test_plot_writes_a_nontrivial_png(tmp_path):
    path = write_log(tmp_path)
    out = plot_log(path, str(tmp_path / 'plot' / 'curves.png'))
    img = cv2.imread(out)
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 800
    assert img.std() > 10  # lines and text, not a blank canvas
    # The two panels differ: the curves are drawn in colours (not only black on white).
    assert (np.abs(img[..., 0].astype(int) - img[..., 2].astype(int)) > 60).mean() > 0.001


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(['plot', str(tmp_path / 'missing.log'), str(tmp_path / 'x.png')]) == 1
    assert 'training log not found' in capsys.readouterr().out
    path = write_log(tmp_path)
    assert main(['plot', path, str(tmp_path / 'ok.png')]) == 0
    assert (tmp_path / 'ok.png').stat().st_size > 10_000
    assert not math.isnan(training_curves(path)['losses']['T'][0])
