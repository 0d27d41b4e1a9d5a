"""The CPU thread governor (alignkit.ops.threads): worked examples with a fake clock."""

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.ops import threads
from alignkit.ops.threads import ThreadGovernor, threads_for


@pytest.fixture(autouse=True)
def keep_thread_count():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    threads._governor = None


def test_threads_for_leaves_the_cores_others_use():
    assert threads_for(2, 0.0) == 2
    assert threads_for(2, 0.4) == 2  # a little background noise keeps both
    assert threads_for(2, 1.0) == 1  # one busy process: one core left
    assert threads_for(2, 3.5) == 1  # never below one
    assert threads_for(8, 2.6) == 5


class FakeMachine:
    """(seconds, machine busy CPU-seconds, own CPU-seconds) advanced by hand."""

    def __init__(self):
        self.now, self.busy, self.own = 0.0, 0.0, 0.0

    def run(self, seconds, own_cores, other_cores):
        self.now += seconds
        self.own += seconds * own_cores
        self.busy += seconds * (own_cores + other_cores)

    def read(self):
        return self.now, self.busy, self.own


def test_governor_follows_another_process_load():
    machine = FakeMachine()
    governor = ThreadGovernor(cores=2, interval=1.0, read=machine.read)
    assert torch.get_num_threads() == 2
    machine.run(0.5, own_cores=2, other_cores=0)
    governor.tick()  # within the interval: nothing measured yet
    assert torch.get_num_threads() == 2
    machine.run(1.0, own_cores=1, other_cores=1)  # 1.5 s: others used 1.0 core-s -> 0.67
    governor.tick()
    assert torch.get_num_threads() == 1
    machine.run(2.0, own_cores=1, other_cores=1)
    governor.tick()
    assert torch.get_num_threads() == 1
    machine.run(2.0, own_cores=1, other_cores=0)  # the other process ended
    governor.tick()
    assert torch.get_num_threads() == 2


def test_governor_keeps_threads_without_proc_stat():
    machine = FakeMachine()
    governor = ThreadGovernor(cores=2, interval=1.0, read=lambda: (machine.now, None, 0.0))
    machine.now = 5.0
    governor.tick()
    assert torch.get_num_threads() == 2


def test_an_explicit_omp_setting_is_left_alone(monkeypatch):
    monkeypatch.delenv("ALIGNKIT_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    threads.enable()
    assert threads._governor is None and torch.get_num_threads() == 1


def test_fixed_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("ALIGNKIT_THREADS", "1")
    threads.enable()
    assert torch.get_num_threads() == 1 and threads._governor is None
    monkeypatch.setenv("ALIGNKIT_THREADS", "many")
    with pytest.raises(AlignkitError, match="'auto' or a number"):
        threads.enable()
