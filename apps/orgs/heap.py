"""The long-running processes' heap and Python's cyclic garbage collector.

A Django process starts with a few hundred thousand objects that live as long as it does
(modules, settings, URL patterns, compiled queries). Every full collection walks them all,
and the allocations of a busy process (a hundred-task batch builds tens of thousands of
objects) set one off often enough to cost a fifth of a batch fetch. Freezing what is alive
once start-up is over moves those objects out of the collector's view for good: later
collections only walk what was allocated since.
"""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Collect once, then freeze every surviving object (call when start-up is over, before
    the process serves anything; a forked child keeps its parent's frozen set)."""
    gc.collect()
    gc.freeze()
