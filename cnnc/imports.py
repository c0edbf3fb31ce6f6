"""Heavy imports (torch, matplotlib) with Python's cyclic garbage collector paused.

Importing torch makes some 300,000 objects, nearly none of them garbage, and the collector runs about
400 times over the growing heap meanwhile: 0.1-0.3 s of the one core the import runs on (measured with
gc.callbacks; the import takes 1.2-2 s here). Once collection resumes, its next pass walks every one of
those objects again (0.1 s). Freezing them (gc.freeze: the permanent generation, which the collector
never walks) avoids that: the modules live as long as the process does.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused(module: str) -> Iterator[None]:
    """Run the block, which imports `module` (and what comes with it), with the cyclic collector paused;
    then freeze the objects alive and resume collection.

    Only the block that imports `module` first does this: when `module` is imported already (a second
    command in one process, as in the tests), or when the collector is off (the process manages it
    itself), the block runs as it is, and what others have made is not frozen with it."""
    if module in sys.modules or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
