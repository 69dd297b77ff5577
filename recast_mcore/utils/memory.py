"""Host-memory measurement: peak resident set size of this process over a block of code."""

from __future__ import annotations

import threading
import time

import psutil


class PeakRss:
    """``with PeakRss() as m: ...`` then (bytes) ``m.before``/``m.peak``/``m.added`` for the RSS and
    ``m.anon_before``/``m.anon_peak``/``m.anon_added`` for its anonymous part (RSS minus file-backed and shared
    pages: what the process allocated, without the page cache of memory-mapped files such as safetensors).
    Sampled every ``interval_s`` by a background thread (a spike shorter than the interval can be missed)."""

    def __init__(self, interval_s: float = 0.005, keep_trace: bool = False):
        self.interval_s = interval_s
        self.trace: list[tuple[float, int, int]] | None = [] if keep_trace else None
        """(seconds since entry, RSS, anonymous RSS) of every sample when ``keep_trace``."""
        self._proc = psutil.Process()
        self.before = self.peak = self.anon_before = self.anon_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> None:
        info = self._proc.memory_info()
        self.peak = max(self.peak, info.rss)
        self.anon_peak = max(self.anon_peak, info.rss - info.shared)
        if self.trace is not None:
            self.trace.append((time.perf_counter() - self._t0, info.rss, info.rss - info.shared))

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRss":
        self._t0 = time.perf_counter()
        info = self._proc.memory_info()
        self.before = self.peak = info.rss
        self.anon_before = self.anon_peak = info.rss - info.shared
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    @property
    def added(self) -> int:
        """Peak RSS minus the RSS at entry."""
        return self.peak - self.before

    @property
    def anon_added(self) -> int:
        """Peak anonymous RSS minus the anonymous RSS at entry."""
        return self.anon_peak - self.anon_before
