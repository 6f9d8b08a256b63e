"""The cost of an evaluation: wall time, throughput and peak memory of each phase (``eval.json``'s
``performance``)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from lambda_dpo.evaluation.model_eval import default_device


@dataclass
class PhaseStats:
    """Work done in one phase: wall seconds, responses and tokens processed (scored or generated)."""

    wall_s: float = 0.0
    responses: int = 0
    tokens: int = 0

    def add(self, responses: int = 0, tokens: int = 0) -> None:
        self.responses += int(responses)
        self.tokens += int(tokens)

    def to_dict(self) -> dict[str, float]:
        wall = max(self.wall_s, 1e-9)
        return {"wall_s": self.wall_s, "responses": self.responses, "tokens": self.tokens,
                "responses_per_s": self.responses / wall, "tokens_per_s": self.tokens / wall}


@dataclass
class PerformanceMonitor:
    """Wall time and throughput per phase, and peak memory, of an evaluation.

    Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU, otherwise the process's peak resident set size
    (``getrusage`` ``ru_maxrss``): on CPU it includes everything the process loaded, models first of all.
    """

    device: str = field(default_factory=default_device)
    phases: dict[str, PhaseStats] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[PhaseStats]:
        stats = self.phases.setdefault(name, PhaseStats())
        start = time.perf_counter()
        try:
            yield stats
        finally:
            stats.wall_s += time.perf_counter() - start

    def peak_memory(self) -> tuple[int, str]:
        if self.device.startswith("cuda"):
            return int(torch.cuda.max_memory_allocated()), "cuda max_memory_allocated"
        try:
            import resource
        except ImportError:  # Windows: no getrusage; the current RSS is a lower bound of the peak
            import psutil

            return int(psutil.Process().memory_info().rss), "process RSS at the end (peak unavailable)"
        # Linux reports kilobytes, macOS bytes.
        scale = 1 if sys.platform == "darwin" else 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale), "process peak RSS"

    def summary(self) -> dict[str, Any]:
        peak, kind = self.peak_memory()
        return {"device": self.device, "total_wall_s": time.perf_counter() - self.started,
                "peak_memory_bytes": peak, "peak_memory_kind": kind,
                "phases": {name: stats.to_dict() for name, stats in self.phases.items()}}


