"""Random generators derived from integers (the run's seed, an epoch, a stream number): what they
draw is fixed by those integers alone, on any machine, so a resumed run needs no saved state for it."""

from __future__ import annotations

import numpy as np
import torch


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from `parts` through numpy's SeedSequence (well mixed, so that nearby
    parts, such as consecutive epochs, give unrelated streams)."""
    state = np.random.SeedSequence(list(parts)).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
