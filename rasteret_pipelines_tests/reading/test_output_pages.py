"""The read's output arrays come in ordinary pages, not numpy's transparent huge pages.

On Linux with THP in ``madvise`` mode numpy advises arrays of 4 MiB and more for huge pages; a
fresh process writing its output once then pays a slow fault per 2 MiB (see
:func:`~rasteret_pipelines.reading.assemble.empty_in_small_pages`). The check runs in a new
interpreter and reads the kernel's own accounting (``AnonHugePages`` in ``/proc/self/smaps``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rasteret_pipelines.reading.assemble import HUGE_PAGE_THRESHOLD, empty_in_small_pages

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

PROBE = r"""
import json, re
import numpy as np
from rasteret_pipelines.reading.assemble import empty_in_small_pages

def huge_kb(a):
    lo = a.__array_interface__["data"][0]
    hi = lo + a.nbytes
    total, overlaps = 0, False
    for line in open("/proc/self/smaps"):
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            start, end = int(m[1], 16), int(m[2], 16)
            overlaps = start < hi and end > lo
        elif overlaps and line.startswith("AnonHugePages:"):
            total += int(line.split()[1])
    return total

shape = (16, 1024, 1024)   # 64 MiB of float32
ours = empty_in_small_pages(shape, np.float32)
ours[:] = 1
theirs = np.empty(shape, np.float32)
theirs[:] = 1
print(json.dumps({"ours": huge_kb(ours), "numpy": huge_kb(theirs), "sum": float(ours.sum())}))
"""


def test_small_arrays_are_plain_numpy_and_large_ones_are_writable_private_memory():
    small = empty_in_small_pages((3, 4), np.float32)
    assert small.base is None and small.shape == (3, 4)
    big = empty_in_small_pages((2, 1024, 1024), np.uint16)
    assert big.nbytes >= HUGE_PAGE_THRESHOLD and big.flags.writeable and big.flags.aligned
    big[:] = 7
    assert big.dtype == np.uint16 and int(big[1, 1023, 1023]) == 7 and big.sum() == 7 * big.size


@pytest.mark.skipif(
    not THP_MODE.exists() or "[madvise]" not in THP_MODE.read_text(),
    reason="transparent huge pages are not in madvise mode here",
)
def test_the_output_gets_no_huge_page_where_numpy_s_own_array_does():
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={"NUMPY_MADVISE_HUGEPAGE": "1", "PATH": "/usr/bin:/bin"},
    )
    found = json.loads(out.stdout)
    assert found["sum"] == 16 * 1024 * 1024
    if found["numpy"] == 0:
        pytest.skip("the kernel gave numpy's array no huge page either (memory fragmented): nothing to compare")
    assert found["ours"] == 0, found
