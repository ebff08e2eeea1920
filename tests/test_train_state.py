"""training/state.py: the training-state file beside each checkpoint (what it holds, how it is
checked on load) and the checkpoint a run resumes from."""
import pytest
import torch

from training.distributed import DistInfo
from training.state import (
    agree_on_resume,
    load_training_state,
    make_training_state,
    resolve_resume,
    restore_training_state,
    rng_states,
    state_path,
    write_checkpoint,
)
from utils.checkpoint import CheckpointError, load_file, save_file

CPU = torch.device('cpu')


class _Net(torch.nn.Linear):
    """A module with Yolact's save_weights, enough for write_checkpoint."""

    def __init__(self):
        super().__init__(2, 2)

    def save_weights(self, path: str) -> None:
        save_file(self.state_dict(), path)


def _state(iteration: int, scaler=None, seed: int = 7):
    optimizer = torch.optim.SGD(_Net().parameters(), lr=0.1)
    sched = type('Sched', (), {'lr_steps': [5]})()
    return make_training_state(iteration, 0, optimizer, 1e-3, seed, sched, CPU, scaler, config='tiny')


def test_training_state_keeps_the_grad_scaler(tmp_path):
    scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)
    save_file(_state(3, scaler), str(tmp_path / 's.pt'))
    state = load_file(str(tmp_path / 's.pt'))  # weights_only=True
    restored = torch.amp.GradScaler('cpu')
    restored.load_state_dict(state['scaler'])
    assert restored.get_scale() == 1024.0 and state['iteration'] == 3 and state['seed'] == 7
    assert state['lr_steps_done'] == 0 and _state(5)['lr_steps_done'] == 1


def test_state_is_checked_against_the_checkpoint_name_and_restores_the_rngs(tmp_path):
    weights = str(tmp_path / 'tiny_0_4.pth')
    assert state_path(weights) == str(tmp_path / 'tiny_0_4.state.pt')
    assert load_training_state(weights) is None  # weights-only checkpoint
    torch.manual_seed(11)
    state = _state(4)
    expected = torch.rand(3)
    write_checkpoint(_Net(), weights, state)
    loaded = load_training_state(weights)
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(_Net().parameters(), lr=0.5)
    assert restore_training_state(weights, loaded, optimizer, None, CPU) == (4, 0)
    assert torch.equal(torch.rand(3), expected) and optimizer.param_groups[0]['lr'] == 0.1
    # Weights only (e.g. the original's checkpoints): the iteration comes from the name.
    said = []
    assert restore_training_state(str(tmp_path / 'tiny_3_321.pth'), None, optimizer, None, CPU, said.append) == (321, 0)
    assert 'No training state' in said[0]
    # A state file renamed to another iteration's checkpoint is refused.
    other = str(tmp_path / 'tiny_0_6.pth')
    write_checkpoint(_Net(), other, _state(4))
    with pytest.raises(CheckpointError, match='is for iteration 4'):
        load_training_state(other)


def test_each_rank_resumes_its_own_rng_stream(tmp_path):
    """The loss draws random numbers on every rank (mask subsampling): a resume with the same world
    size gives each rank the stream it had; another world size starts every rank from rank 0's."""
    streams = []
    for seed in (1, 2):  # rank 0 and rank 1 at checkpoint time
        torch.manual_seed(seed)
        streams.append(rng_states(CPU))
    expected = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        expected.append(torch.rand(3))
    optimizer = torch.optim.SGD(_Net().parameters(), lr=0.1)
    sched = type('Sched', (), {'lr_steps': [5]})()
    torch.manual_seed(1)  # rank 0 writes the state: its own stream is 'rng'
    written = make_training_state(4, 0, optimizer, 1e-3, 7, sched, CPU, rank_rngs=streams)
    weights = str(tmp_path / 'tiny_0_4.pth')
    write_checkpoint(_Net(), weights, written)
    state = load_training_state(weights)
    for rank in (0, 1):
        torch.manual_seed(99)
        restore_training_state(weights, state, optimizer, None, CPU, rank=rank, world_size=2)
        assert torch.equal(torch.rand(3), expected[rank])
    torch.manual_seed(99)
    restore_training_state(weights, state, optimizer, None, CPU, rank=1, world_size=3)
    assert torch.equal(torch.rand(3), expected[0])


def test_resolve_resume_latest_interrupt_and_paths(tmp_path):
    assert resolve_resume(None, str(tmp_path), 'tiny') is None
    with pytest.raises(FileNotFoundError, match='no tiny_'):
        resolve_resume('latest', str(tmp_path), 'tiny')
    with pytest.raises(FileNotFoundError, match='no \\*_interrupt.pth'):
        resolve_resume('interrupt', str(tmp_path), 'tiny')
    for name, iteration in (('tiny_0_2.pth', 2), ('tiny_1_4_interrupt.pth', 4), ('other_9_99.pth', 99)):
        write_checkpoint(_Net(), str(tmp_path / name), _state(iteration))
    assert resolve_resume('latest', str(tmp_path), 'tiny') == str(tmp_path / 'tiny_1_4_interrupt.pth')
    assert resolve_resume('interrupt', str(tmp_path), 'tiny') == str(tmp_path / 'tiny_1_4_interrupt.pth')
    assert resolve_resume(str(tmp_path / 'tiny_0_2.pth'), str(tmp_path), 'x') == str(tmp_path / 'tiny_0_2.pth')


def test_resume_auto_takes_the_newest_complete_checkpoint_or_starts_fresh(tmp_path):
    folder = str(tmp_path)
    assert resolve_resume('auto', folder, 'tiny') is None  # nothing yet: start from scratch
    write_checkpoint(_Net(), str(tmp_path / 'tiny_0_2.pth'), _state(2))
    assert resolve_resume('auto', folder, 'tiny') == str(tmp_path / 'tiny_0_2.pth')
    write_checkpoint(_Net(), str(tmp_path / 'tiny_1_4_interrupt.pth'), _state(4))
    assert resolve_resume('auto', folder, 'tiny') == str(tmp_path / 'tiny_1_4_interrupt.pth')
    # Newer, but not complete (weights without the training state, or a torn weights file): skipped.
    _Net().save_weights(str(tmp_path / 'tiny_1_6.pth'))
    (tmp_path / 'tiny_2_8.pth').write_bytes(b'torn')
    save_file(_state(8), state_path(str(tmp_path / 'tiny_2_8.pth')))
    assert resolve_resume('auto', folder, 'tiny') == str(tmp_path / 'tiny_1_4_interrupt.pth')
    assert resolve_resume('auto', folder, 'other') is None


def test_one_process_agrees_with_itself_and_reports_rank_0_errors(tmp_path):
    info = DistInfo(0, 1, 0)
    assert agree_on_resume('auto', str(tmp_path), 'tiny', info) is None
    write_checkpoint(_Net(), str(tmp_path / 'tiny_0_2.pth'), _state(2))
    assert agree_on_resume('latest', str(tmp_path), 'tiny', info) == str(tmp_path / 'tiny_0_2.pth')
    with pytest.raises(FileNotFoundError, match='no \\*_interrupt.pth'):
        agree_on_resume('interrupt', str(tmp_path), 'tiny', info)
