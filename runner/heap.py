"""The garbage collector, tuned for a process that runs commands for days.

CPython's defaults (a young collection every 700 net allocations, a full one every 100 young
ones) were measured to take 22% of ``serve``'s CPU in ``bench.e2e``'s throughput run:
each command allocates a few hundred tracked objects, almost all freed by reference counting
within the batch, yet every collection walks the whole young generation and the full ones
the whole heap, which after start-up is mostly modules, schemas and clients that live as long
as the process. So ``settle`` moves what start-up built out of the collector's sight
(``gc.freeze``) and starts a young collection every 50,000 net allocations, not 700. Cyclic
garbage is still collected, later; a batch in flight holds at most ``max_in_flight``
commands, so what waits is bounded."""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 100)
"""``gc.set_threshold``: young, middle and full generations (CPython's: 700, 10, 10)."""


def settle() -> None:
    """Freeze what start-up built and collect less often; call once, when serving starts."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
