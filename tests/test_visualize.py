"""deploy/visualize.py: class names that are not ASCII are written in a font that has their glyphs,
or replaced by the class index, never drawn as '???'."""
import numpy as np
import pytest
import torch
from matplotlib import font_manager

import deploy.visualize as visualize
import eval as eval_script
from deploy.visualize import DrawOptions, covers, draw_detections, draw_label, draw_style, label_font

# Ships with matplotlib, so every machine that runs the tests has it: Latin-1, Greek, Cyrillic.
DEJAVU = font_manager.findfont('DejaVu Sans', fallback_to_default=True)
BOX = torch.tensor([[20, 50, 120, 110]])


@pytest.fixture(autouse=True)
def fresh_font_choice(monkeypatch):
    """Each test searches fonts and warns anew."""
    monkeypatch.setattr(visualize, '_warned_no_font', set())
    label_font.cache_clear()
    yield
    label_font.cache_clear()


def _draw(names, font=None):
    img = np.full((120, 160, 3), 90, dtype=np.uint8)
    return draw_detections(img, torch.tensor([0]), torch.tensor([0.9]), BOX, None, names,
                           DrawOptions(font=font))


def _label_pixels(out):
    """The label above the box (white text on the class colour)."""
    return out[:50, 20:]


@pytest.mark.parametrize('name', ['café', 'Ω', 'Жук'])
def test_non_ascii_names_are_written_with_their_glyphs(name):
    assert covers(DEJAVU, name) and label_font(name) is not None
    out = _draw((name,))
    white = (_label_pixels(out) > 200).all(axis=2)
    assert white.sum() > 10  # text was written
    # Not what OpenCV makes of it, nor the same font's question marks.
    assert not np.array_equal(out, _draw(('?' * len(name),)))
    style = draw_style(120, 160)
    glyphs, marks = (np.zeros((40, 120, 3), np.uint8) for _ in range(2))
    draw_label(glyphs, f'{name}: 0.90', 0, 39, (0, 0, 200), style, DEJAVU)
    draw_label(marks, f'{"?" * len(name)}: 0.90', 0, 39, (0, 0, 200), style, DEJAVU)
    assert not np.array_equal(glyphs, marks)


def test_explicit_font_is_used(monkeypatch):
    monkeypatch.setattr(visualize, '_font_paths', lambda: ())  # nothing found by searching
    assert not np.array_equal(_draw(('café',), font=DEJAVU), _draw(('0',)))


def test_without_a_font_the_class_index_is_drawn_and_said_once(monkeypatch, capsys):
    monkeypatch.setattr(visualize, '_font_paths', lambda: ())
    first = _draw(('行人',))
    assert np.array_equal(first, _draw(('0',)))
    _draw(('瓶子',))
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and 'class indices' in lines[0] and '--font' in lines[0]


def test_a_given_font_without_the_glyphs_falls_back_to_the_index(capsys):
    assert not covers(DEJAVU, '行人')
    assert np.array_equal(_draw(('行人',), font=DEJAVU), _draw(('0',)))
    assert DEJAVU in capsys.readouterr().out


def test_ascii_names_keep_opencvs_font(monkeypatch):
    def no_search(*args):
        raise AssertionError('an ASCII label needs no font search')
    monkeypatch.setattr(visualize, 'label_font', no_search)
    assert (_label_pixels(_draw(('circle',))) > 200).any()


def test_unreadable_font_is_one_line_errors(tmp_path):
    bad = tmp_path / 'not_a_font.ttf'
    bad.write_bytes(b'nothing here')
    with pytest.raises(ValueError, match='cannot read the font file'):
        _draw(('café',), font=str(bad))
    opts = eval_script.parse_args(['--image', str(bad), '--font', str(tmp_path / 'missing.ttf')])
    with pytest.raises(eval_script.EvalError, match='--font: file not found'):
        eval_script.check_media_inputs(opts)
    opts.font = str(bad)
    with pytest.raises(eval_script.EvalError, match='--font: cannot read the font file'):
        eval_script.check_media_inputs(opts)
