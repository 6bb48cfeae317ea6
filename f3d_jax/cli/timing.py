"""Seconds per stage of an `f3d` run, with the time JAX spent compiling counted separately."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager

# JAX reports the compilation of every program (a persistent-cache load included) under this event name
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HITS = "/jax/compilation_cache/cache_hits"
_CACHE_LOAD = "/jax/compilation_cache/cache_retrieval_time_sec"  # inside the compile event of a cache hit


@dataclasses.dataclass
class StageClock:
    """Wall-clock seconds per stage and, for each, the seconds of it spent compiling.

    Use as a context manager (it listens to `jax.monitoring` while open), and `with clock.stage(name):` around
    each stage. `compile_s[name]` is part of `seconds[name]`: XLA compilations, less the time spent loading
    programs from the persistent compilation cache (`cache_hits` of them).
    """

    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    compile_s: dict[str, float] = dataclasses.field(default_factory=dict)
    cache_hits: int = 0
    _current: str | None = None

    def _on_duration(self, event: str, duration_secs: float, **_: object) -> None:
        if self._current is None:
            return
        if event == _BACKEND_COMPILE:
            self.compile_s[self._current] = self.compile_s.get(self._current, 0.0) + duration_secs
        elif event == _CACHE_LOAD:
            self.compile_s[self._current] = self.compile_s.get(self._current, 0.0) - duration_secs

    def _on_event(self, event: str, **_: object) -> None:
        if event == _CACHE_HITS:
            self.cache_hits += 1

    def __enter__(self) -> "StageClock":
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc: object) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._on_duration)
        jax.monitoring.unregister_event_listener(self._on_event)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        prev, self._current = self._current, name
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self._current = prev

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    @property
    def total_compile_s(self) -> float:
        return max(0.0, sum(self.compile_s.values()))

    def line(self) -> str:
        """`'12.3 s (load 0.1, inference 5.0 [compile 3.1], ...; compile 4.2 s, 3 cached programs)'`."""
        parts = []
        for name, s in self.seconds.items():
            c = max(0.0, self.compile_s.get(name, 0.0))
            parts.append(f"{name} {s:.1f}" + (f" [compile {c:.1f}]" if c >= 0.05 else ""))
        cache = f", {self.cache_hits} programs loaded from the compile cache" if self.cache_hits else ""
        return f"{self.total_s:.1f} s ({', '.join(parts)}; compile {self.total_compile_s:.1f} s{cache})"
