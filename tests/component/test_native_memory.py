"""Freed memory goes back to the OS after an upgrade (node/native_memory.py).

What a user checks: a node's resident memory after an upgrade. The sandbox run, the state's parse and
the executor thread free megabytes that glibc keeps (in its heap and in the executor thread's arena) unless
told to give them back: measured on a 5-node cluster, 1.1 MB of a node's 18 MB private memory, 5 MB on
the node that compiled the module. Here: memory freed between live objects stays resident until the call.
"""

from __future__ import annotations

import threading

from node.native_memory import release_freed_memory


def _private_dirty_kb() -> int:
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1])
    raise AssertionError("no Private_Dirty in smaps_rollup")


def test_memory_freed_between_live_objects_goes_back_to_the_os() -> None:
    def churn(kept: list) -> None:
        # 60 MB in 6 KB blocks (malloc's, not Python's small-object arenas), every 16th kept: the freed
        # blocks sit between live ones, so the heap cannot simply shrink from its top.
        blocks = [bytearray(6_000) for _ in range(10_000)]
        kept.extend(blocks[::16])
    kept: list = []
    worker = threading.Thread(target=churn, args=(kept,))     # as in the executor: a thread's own arena
    worker.start()
    worker.join()
    before = _private_dirty_kb()
    assert release_freed_memory() is True
    after = _private_dirty_kb()
    assert before - after > 20_000, (before, after)
    assert all(len(block) == 6_000 for block in kept)
