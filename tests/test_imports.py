"""The project's import floors, read from the source: every import runs down (or stays inside its
own package), never up. From the top:

    train.py, eval.py, export.py   the scripts: parse flags, call into the rooms (none imports another)
    training/                      the training run: schedule, step, state, distributed, progress, ...
    evaluation/, predictor.py      mAP on a dataset and its reports; the Python API for pictures
    deploy/                        inference, drawing, result files, exported files and their runtime
    yolact.py                      the network
    utils/                         the shared core: config-free helpers, device, checkpoints, augmentations
    layers/                        box math, detection, loss
    data/                          configs, datasets, sampling
    backbone.py                    the ground floor: only torch / torchvision

An upward import would make a lower floor unusable without the one above it. Two more rules of the
house are read from the source here: only the scripts and data/config.py's facade touch the global
config (everything else is handed a config value), and no room holds more than a quarter of the code.
"""
import ast
from pathlib import Path
from typing import Dict, Iterator, Tuple

REPO = Path(__file__).resolve().parents[1]
# Floor of each project module (top-level file or package), lowest first.
FLOORS: Dict[str, int] = {'backbone': 0, 'data': 1, 'layers': 2, 'utils': 3, 'yolact': 4, 'deploy': 5,
                          'evaluation': 6, 'predictor': 6, 'training': 7, 'eval': 8, 'export': 8, 'train': 8}
# Folders of tools that sit above every floor and are not imported by the project.
TOOLS = {'tests', 'benchmarks', 'scripts'}


def project_modules() -> Dict[str, Path]:
    """Top-level module or package name -> its path, for everything in the repository root."""
    found = {p.stem: p for p in REPO.glob('*.py')}
    found.update({p.parent.name: p.parent for p in REPO.glob('*/__init__.py')})
    return {name: path for name, path in found.items() if name not in TOOLS}


def imports_of(path: Path, package: str) -> Iterator[Tuple[int, str]]:
    """(line, top-level name) of every import in `path`, also those inside functions; relative
    imports resolve to `package`."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split('.')[0]
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, package if node.level else node.module.split('.')[0]


def test_every_project_module_has_a_floor():
    assert sorted(project_modules()) == sorted(FLOORS)


def test_no_import_runs_upward():
    modules = project_modules()
    wrong = []
    for name, root in modules.items():
        files = [root] if root.is_file() else sorted(root.rglob('*.py'))
        for path in files:
            for line, target in imports_of(path, name):
                if target not in modules or target == name:
                    continue  # third-party, or inside its own package
                if FLOORS[target] >= FLOORS[name]:
                    wrong.append(f'{path.relative_to(REPO)}:{line} ({name}, floor {FLOORS[name]}) imports '
                                 f'{target} (floor {FLOORS[target]})')
    assert wrong == [], wrong


def test_the_floor_check_sees_imports_inside_functions(tmp_path):
    # Lazy imports count too: a function-level `import train` in eval.py would be caught.
    path = tmp_path / 'probe.py'
    path.write_text('import os\n\ndef f():\n    from train import main\n    from .config import cfg\n')
    assert list(imports_of(path, 'data')) == [(1, 'os'), (4, 'train'), (5, 'data')]


# The scripts hold their config as a value and pass it down; data/config.py is the facade that owns
# the global (set_cfg, set_dataset, use_dataset and own_config's default for the original's API).
SCRIPTS = {'train', 'eval', 'export'}
FACADE = REPO / 'data' / 'config.py'
GLOBAL_NAMES = {'cfg', 'set_cfg', 'set_dataset', 'use_dataset'}


def global_config_uses(path: Path) -> Iterator[Tuple[int, str]]:
    """(line, what) of every import of the global config or of a function that writes it, and of
    every `data.config.cfg` attribute read, in `path`."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or '') in ('data.config', 'config', 'data'):
            for alias in node.names:
                if alias.name in GLOBAL_NAMES:
                    yield node.lineno, f'imports {alias.name}'
        elif isinstance(node, ast.Attribute) and node.attr in GLOBAL_NAMES \
                and isinstance(node.value, ast.Attribute) and node.value.attr == 'config':
            yield node.lineno, f'reads config.{node.attr}'


def test_only_the_scripts_and_the_facade_touch_the_global_config():
    wrong = []
    for name, root in project_modules().items():
        if name in SCRIPTS:
            continue
        for path in [root] if root.is_file() else sorted(root.rglob('*.py')):
            if path == FACADE:
                continue
            wrong += [f'{path.relative_to(REPO)}:{line} {what}' for line, what in global_config_uses(path)]
    assert wrong == [], wrong


def test_the_global_config_check_sees_each_form(tmp_path):
    path = tmp_path / 'probe.py'
    path.write_text('import data.config\nfrom data.config import Config, cfg\nfrom .config import set_cfg\n'
                    'def f():\n    from data import use_dataset\n    return data.config.cfg.name\n')
    assert [line for line, _ in global_config_uses(path)] == [2, 3, 5, 6]


def source_lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def room_lines() -> Dict[str, int]:
    """Python source lines of each room: a top-level module, or a package counted without its
    subpackages, which are rooms of their own (tests and benchmarks aside)."""
    rooms: Dict[str, int] = {}
    for name, root in project_modules().items():
        if root.is_file():
            rooms[name] = source_lines(root)
            continue
        for path in root.rglob('*.py'):
            package = path.parent.relative_to(REPO).as_posix().replace('/', '.')
            rooms[package] = rooms.get(package, 0) + source_lines(path)
    return rooms


def test_no_room_holds_more_than_a_quarter_of_the_source():
    rooms = room_lines()
    total = sum(rooms.values())
    assert {room: lines for room, lines in rooms.items() if lines > total / 4} == {}
