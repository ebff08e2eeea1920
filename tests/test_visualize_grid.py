import cv2
import numpy as np
import pytest

from deploy.visualize import image_grid, main


def test_grid_places_each_tile():
    tiles = [np.full((10, 20, 3), v, dtype=np.uint8) for v in (10, 60, 110)]
    grid = image_grid(tiles, columns=2, size=8, gap=2)
    assert grid.shape == (8 * 2 + 2, 8 * 2 + 2, 3)
    assert (grid[:8, :8] == 10).all() and (grid[:8, 10:] == 60).all() and (grid[10:, :8] == 110).all()
    assert (grid[:, 8:10] == 255).all()  # gap
    assert (grid[10:, 10:] == 255).all()  # empty cell
    with pytest.raises(ValueError):
        image_grid([])


def test_grid_cli(tmp_path, capsys):
    for k in range(5):
        cv2.imwrite(str(tmp_path / f'{k}.png'), np.full((30, 30, 3), 40 * k, dtype=np.uint8))
    (tmp_path / 'notes.txt').write_text('not an image')
    out = tmp_path / 'grid' / 'g.png'
    assert main(['grid', str(tmp_path), str(out), '--columns', '3', '--size', '16']) == 0
    assert cv2.imread(str(out)).shape == (16 * 2 + 4, 16 * 3 + 8, 3)
    assert main(['grid', str(tmp_path / 'none'), str(out)]) == 1
    assert 'no images' in capsys.readouterr().out
