"""utils/memory.PeakRss sees an allocation made and freed inside the block."""

import time

import torch

from recast_mcore.utils.memory import PeakRss


def test_peak_rss_sees_a_transient_allocation():
    with PeakRss(keep_trace=True) as m:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        x.add_(1)
        time.sleep(0.2)  # the sampler thread runs every 5 ms
        del x
    assert m.anon_added >= 48 * 2**20 and m.added >= m.anon_added - 2**20
    assert m.trace and m.trace[-1][0] >= 0
