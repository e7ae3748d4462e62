"""Prometheus metrics of one engine, in a registry of its own (several engines per test)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # The engine's view: requests it refused at admission or finished, by outcome. The
        # front door's tessera_requests_total counts every call, those the engine never sees too.
        self.requests = Counter("tessera_engine_requests", "Engine requests by outcome (admission refusals included).",
                                ["outcome"], registry=r)
        self.latency = Histogram("tessera_request_latency_seconds",
                                 "End-to-end latency of finished requests.", buckets=_LATENCY, registry=r)
        self.queue = Histogram("tessera_op_queue_seconds", "Time a row waited before its batch ran.",
                               ["op"], buckets=_LATENCY, registry=r)
        self.compute = Histogram("tessera_op_compute_seconds", "Time of one batch call (or step), its wait for the device's turn included.",
                                 ["op"], buckets=_LATENCY, registry=r)
        self.device_wait = Histogram("tessera_op_device_wait_seconds",
                                     "Time a call waited for its device's turn (graph.device_turns).",
                                     ["op"], buckets=_LATENCY, registry=r)
        self.batch_rows = Histogram("tessera_op_batch_rows", "Rows in one batch call (or step).",
                                    ["op"], buckets=_ROWS, registry=r)
        self.threads = Counter("tessera_op_thread_calls",
                               "Calls (steps, for a stepping OP) by the thread count they computed with "
                               "(an OP's `threads`; batch calls counted for thread workers).",
                               ["op", "threads"], registry=r)
        self.depth = Gauge("tessera_channel_depth", "Requests waiting in an OP's channel.", ["op"], registry=r)
        self.live_workers = Gauge("tessera_op_live_workers", "An OP's workers that are up (of its concurrency).",
                                  ["op"], registry=r)
        self.worker_restarts = Counter("tessera_op_worker_restarts",
                                       "Workers replaced after they died or were abandoned.", ["op"], registry=r)
        self.rows_retried = Counter("tessera_op_rows_retried",
                                    "Rows given back to the queue when their worker was lost.", ["op"], registry=r)
        self.inflight = Gauge("tessera_inflight_requests", "Admitted requests not yet finished.", registry=r)
