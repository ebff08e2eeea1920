"""Fixtures shared by the whole test suite."""
from pathlib import Path

import pytest

from data.coco import DatasetPaths

# The tiny synthetic dataset every test may use: generated once per session.
SYNTHETIC_SEED = 0
SYNTHETIC_SIZE = 256
SYNTHETIC_TRAIN = 8
SYNTHETIC_VAL = 4


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory) -> Path:
    """Folder with a tiny synthetic dataset (8 train / 4 val images, 256 px, seed 0) in the layout
    of ``python -m data.synthetic``: train/, val/, instances_train.json, instances_val.json."""
    from data.synthetic import generate

    root = tmp_path_factory.mktemp('synthetic')
    generate(str(root), SYNTHETIC_TRAIN, SYNTHETIC_VAL, seed=SYNTHETIC_SEED, size=SYNTHETIC_SIZE,
             workers=1, progress=False)
    return root


@pytest.fixture(scope='session')
def synthetic_paths(synthetic_root) -> DatasetPaths:
    """The four paths of the tiny synthetic dataset, named like the cfg.dataset fields."""
    return DatasetPaths(train_images=str(synthetic_root / 'train'),
                        train_info=str(synthetic_root / 'instances_train.json'),
                        valid_images=str(synthetic_root / 'val'),
                        valid_info=str(synthetic_root / 'instances_val.json'))


def _no_probe(shape):
    raise AssertionError(f'a test reached the bf16 speed probe ({shape}): patch utils.device.probe_bf16_ratio '
                         'with a timing of its own, or force --amp_dtype')


@pytest.fixture(autouse=True)
def no_bf16_probe(tmp_path_factory, monkeypatch):
    """`--amp` on CPU never times the real bf16 probe in a test (slow, load-dependent), and its cache
    lives in a temporary folder, fresh per test (the env var reaches subprocesses too)."""
    import utils.device
    monkeypatch.setenv('YOLACT_CACHE_DIR', str(tmp_path_factory.mktemp('yolact_cache')))
    monkeypatch.setattr(utils.device, 'probe_bf16_ratio', _no_probe)
    monkeypatch.setattr(utils.device, '_VERDICTS', {})
    monkeypatch.setattr(utils.device, '_ANNOUNCED', set())


@pytest.fixture
def restore_cfg():
    """After the test, the global config is the one the suite starts with (yolact_base), for test
    files that set it (`pytestmark = pytest.mark.usefixtures('restore_cfg')`)."""
    yield
    from data.config import set_cfg
    set_cfg('yolact_base_config')
