import os
import pickle

import pytest
import torch

from utils.checkpoint import CheckpointError, load_state_dict_file, save_file


def test_round_trip_is_atomic_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / 'w.pth'
    save_file({'a': torch.arange(3.0)}, str(path))
    assert torch.equal(load_state_dict_file(str(path))['a'], torch.arange(3.0))
    assert os.listdir(tmp_path) == ['w.pth']


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'w.pth'
    save_file({'a': torch.ones(2)}, str(path))

    def broken_save(obj, f):
        f.write(b'partial')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError):
        save_file({'a': torch.zeros(2)}, str(path))
    monkeypatch.undo()
    assert torch.equal(load_state_dict_file(str(path))['a'], torch.ones(2))
    assert os.listdir(tmp_path) == ['w.pth']


def test_missing_truncated_and_not_a_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        load_state_dict_file(str(tmp_path / 'nope.pth'))
    good = tmp_path / 'good.pth'
    torch.save({'a': torch.ones(100)}, good)
    truncated = tmp_path / 'trunc.pth'
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match='trunc.pth'):
        load_state_dict_file(str(truncated))
    listy = tmp_path / 'list.pth'
    torch.save([torch.ones(1)], listy)
    with pytest.raises(CheckpointError, match='not a state_dict'):
        load_state_dict_file(str(listy))


class _Evil:
    def __reduce__(self):
        return (os.system, ('touch PWNED_BY_PICKLE',))


def test_pickle_carrying_code_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / 'evil.pth'
    torch.save({'a': torch.ones(1), 'payload': _Evil()}, evil, pickle_module=pickle)
    with pytest.raises(CheckpointError, match='refused') as err:
        load_state_dict_file(str(evil))
    assert '\x1b' not in str(err.value) and '\n' not in str(err.value)
    assert not (tmp_path / 'PWNED_BY_PICKLE').exists()


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path):
    import os
    import stat

    from utils.functions import write_atomically
    old = os.umask(0o022)
    try:
        path = tmp_path / 'metrics.json'
        write_atomically(str(path), lambda f: f.write(b'{}'))
        plain = tmp_path / 'plain.json'
        plain.write_bytes(b'{}')
    finally:
        os.umask(old)
    assert path.read_bytes() == b'{}'
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644
