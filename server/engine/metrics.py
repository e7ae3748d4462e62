"""Prometheus metrics of one engine: in a registry of its own (several engines per test), or in
a registry several engines share, one per served model, each with its `model` label.

    EngineMetrics()                                  # a registry of its own, no model label
    EngineMetrics(registry, model="mini")           # tessera_op_queue_seconds{model="mini",op=...}

Either way the engine records the same calls (`metrics.queue.labels(op).observe(s)`): with a
model the label is put in front of the others here, once, so a model's series are bounded
(one value per model served) and nothing that records knows about models.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# name -> (kind, help, labels, extra keyword arguments)
_FAMILIES: dict[str, tuple[type, str, str, tuple[str, ...], dict[str, Any]]] = {
    # The engine's view: requests it refused at admission or finished, by outcome. The front
    # door's tessera_requests_total counts every call, those the engine never sees too.
    "requests": (Counter, "tessera_engine_requests", "Engine requests by outcome (admission refusals included).",
                 ("outcome",), {}),
    "latency": (Histogram, "tessera_request_latency_seconds", "End-to-end latency of finished requests.",
                (), {"buckets": _LATENCY}),
    "queue": (Histogram, "tessera_op_queue_seconds", "Time a row waited before its batch ran.",
              ("op",), {"buckets": _LATENCY}),
    "compute": (Histogram, "tessera_op_compute_seconds",
                "Time of one batch call (or step), its wait for the device's turn included.",
                ("op",), {"buckets": _LATENCY}),
    "device_wait": (Histogram, "tessera_op_device_wait_seconds",
                    "Time a call waited for its device's turn (graph.device_turns).", ("op",), {"buckets": _LATENCY}),
    "batch_rows": (Histogram, "tessera_op_batch_rows", "Rows in one batch call (or step).", ("op",),
                   {"buckets": _ROWS}),
    "threads": (Counter, "tessera_op_thread_calls",
                "Calls (steps, for a stepping OP) by the thread count they computed with "
                "(an OP's `threads`; batch calls counted for thread workers).", ("op", "threads"), {}),
    "depth": (Gauge, "tessera_channel_depth", "Requests waiting in an OP's channel.", ("op",), {}),
    "live_workers": (Gauge, "tessera_op_live_workers", "An OP's workers that are up (of its concurrency).",
                     ("op",), {}),
    "worker_restarts": (Counter, "tessera_op_worker_restarts", "Workers replaced after they died or were abandoned.",
                        ("op",), {}),
    "rows_retried": (Counter, "tessera_op_rows_retried", "Rows given back to the queue when their worker was lost.",
                     ("op",), {}),
    "inflight": (Gauge, "tessera_inflight_requests", "Admitted requests not yet finished.", (), {}),
}

# One set of model-labelled families per shared registry (a family is registered once).
_SHARED: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Any]] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


class _ForModel:
    """A model-labelled family as the engine records into it: `.labels(op)` is the family's
    `.labels(model, op)`."""

    def __init__(self, family: Any, model: str):
        self._family, self._model = family, model

    def labels(self, *values: str) -> Any:
        return self._family.labels(self._model, *values)


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, model: str | None = None):
        """`model` None: the families in `registry` (a new one if None) carry their own labels
        only; a name: the shared, model-labelled families of `registry`, this model's part."""
        self.registry = registry or CollectorRegistry()
        self.model = model
        if model is None:
            for attr, (kind, name, doc, labels, extra) in _FAMILIES.items():
                setattr(self, attr, kind(name, doc, list(labels), registry=self.registry, **extra))
            return
        with _SHARED_LOCK:
            families = _SHARED.get(self.registry)
            if families is None:
                families = _SHARED[self.registry] = {
                    attr: kind(name, doc, ["model", *labels], registry=self.registry, **extra)
                    for attr, (kind, name, doc, labels, extra) in _FAMILIES.items()}
        for attr, (_, _, _, labels, _) in _FAMILIES.items():
            family = families[attr]
            setattr(self, attr, _ForModel(family, model) if labels else family.labels(model))

    def forget(self) -> None:
        """Drop this model's series from a shared registry (its model was unloaded): a model
        that no longer serves leaves no stale gauges behind. A no-op without a model."""
        if self.model is None:
            return
        families = _SHARED.get(self.registry, {})
        for family in families.values():
            for values in [v for v in list(family._metrics) if v and v[0] == self.model]:
                family.remove(*values)


def level(gauge: Any):
    """A setter of `gauge` that moves it by the difference from the value this setter set
    last: several engines serving one model (a version draining beside the new one) each add
    their own part to the model's gauge, where `set` would let the last writer win."""
    last = 0.0

    def set_level(value: float) -> None:
        nonlocal last
        gauge.inc(value - last)
        last = value
    return set_level
