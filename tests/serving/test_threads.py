"""How a service process shares its cores: the decode pool gets one thread per core, the
forward pass half of them (it runs beside the decode of the next requests)."""

from __future__ import annotations

import os

from medai.serving.inference.service import cpu_threads, forward_threads


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def test_the_forward_pass_gets_half_the_cores_of_its_process() -> None:
    cores = _cores()
    assert cpu_threads(0) == cores
    assert forward_threads(0) == max(1, cores // 2)
    # Worker processes divide the cores first; never fewer than one thread.
    assert forward_threads(0, workers=2) == max(1, cores // 2 // 2)
    assert forward_threads(0, workers=4 * cores) == 1


def test_a_setting_wins() -> None:
    assert forward_threads(3) == 3
    assert cpu_threads(5, workers=2) == 5
