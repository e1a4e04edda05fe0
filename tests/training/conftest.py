"""Keep torch to one thread per test process: ``pytest -n 2`` on 2 cores would otherwise
run 2 x (cores) threads and spend its time switching between them."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
