"""OpenTelemetry traces of each request: a server span, a span per stage, the workers' calls.

Off unless an OTLP endpoint is given (`tessera serve --otlp-traces-endpoint URL`, the
`tracing:` section, or the standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT /
OTEL_EXPORTER_OTLP_ENDPOINT variables); off, nothing of the SDK is imported and the engine
has no tracing observer. On, `TraceObserver` subscribes to the engine's observer seam
(engine/observe.py) and turns a request's life into spans:

    generate (SERVER, parent: the caller's W3C traceparent, if any)
    ├── tokenize            queue and compute time, worker, device, precision, batch size
    ├── clip_text
    ├── sample              + events: admitted to a running batch, evicted; steps
    │   ├── sample compute  one per worker call the request's rows rode in, timed on the
    │   └── ...             worker (thread, process or Ray actor: host.name, process.pid)
    ├── decode
    └── rerank

The workers' spans are timed where they compute, under the context their call carried
(workers/base.py), and exported here: a process or Ray worker needs no exporter.

    provider = start_tracing(config.tracing)          # None when tracing is off
    engine.observers.add(TraceObserver(provider.get_tracer("tessera"), model="shapes"))
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tessera.server.engine.observe import Call, Observer

if TYPE_CHECKING:
    from tessera.server.config import TracingConfig
    from tessera.server.engine import EngineError, Request, Result
    from tessera.server.engine.request import StageState
    from tessera.server.engine.stage import RowTask
    from tessera.server.engine.workers import Worker

log = logging.getLogger("tessera.server")

TRACE_HEADERS = ("traceparent", "tracestate")  # W3C Trace Context, as gRPC metadata and HTTP headers


def trace_headers(pairs: Any) -> dict[str, str] | None:
    """The W3C trace headers among `pairs` (gRPC metadata, HTTP headers), or None."""
    found = {}
    for key, value in pairs:
        key = key.lower() if isinstance(key, str) else key
        if key in TRACE_HEADERS and isinstance(value, str):
            found[key] = value
    return found or None


def endpoint_of(config: TracingConfig) -> str | None:
    """Where spans go: the configured endpoint, else the standard OTLP variables; None: off."""
    return (config.otlp_traces_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None)


def start_tracing(config: TracingConfig):
    """A TracerProvider exporting OTLP to the configured endpoint (batched, as the OTEL_BSP_*
    variables say), or None when tracing is off. The protocol is OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
    (or OTEL_EXPORTER_OTLP_PROTOCOL): grpc, the default, or http/protobuf."""
    endpoint = endpoint_of(config)
    if endpoint is None:
        return None
    try:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise RuntimeError("tracing needs the OpenTelemetry SDK and OTLP exporter: "
                           "pip install 'tessera[otel]'") from None
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc")
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        else:
            raise RuntimeError(f"OTLP protocol {protocol!r} is not supported; use grpc or http/protobuf")
    except ImportError:
        package = "opentelemetry-exporter-otlp-proto-" + ("grpc" if protocol == "grpc" else "http")
        raise RuntimeError(f"OTLP over {protocol} needs {package}: pip install {package}") from None
    provider = make_provider(config)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    log.info("tracing: OTLP over %s to %s", protocol, endpoint)
    return provider


def make_provider(config: TracingConfig):
    """A TracerProvider with the configured service name and sampler and no exporter yet.
    A sample_ratio samples the traces a request starts itself at that ratio, and follows the
    caller's decision where a traceparent came (0: only those); left out, the SDK reads
    OTEL_TRACES_SAMPLER(_ARG) (default: every trace)."""
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    name = config.service_name or os.environ.get("OTEL_SERVICE_NAME") or "tessera"
    resource = Resource.create({"service.name": name}).merge(OTELResourceDetector().detect())
    if config.service_name:  # the file's name wins over OTEL_RESOURCE_ATTRIBUTES' service.name
        resource = resource.merge(Resource({"service.name": config.service_name}))
    kw = {} if config.sample_ratio is None else {"sampler": ParentBased(TraceIdRatioBased(config.sample_ratio))}
    return TracerProvider(resource=resource, **kw)


@dataclass
class _Stage:
    span: Any
    carrier: dict[str, str]
    compute_s: float = 0.0
    calls: int = 0
    steps: int = 0
    batch_size: int = 0


@dataclass
class _Trace:
    root: Any
    stages: dict[str, _Stage] = field(default_factory=dict)


class TraceObserver(Observer):
    """Spans from the engine's observer seam (see the module's docstring)."""

    def __init__(self, tracer: Any, *, model: str = "", precision: Mapping[str, str] | None = None,
                 devices: Mapping[str, Sequence[str]] | None = None):
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer, self.model = tracer, model
        self.precision = dict(precision or {})
        self.devices = dict(devices or {})
        self._trace = trace
        self._w3c = TraceContextTextMapPropagator()
        # Engine times are time.monotonic(); spans want wall-clock nanoseconds.
        self._wall_offset = time.time_ns() - time.monotonic_ns()

    def _ns(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self._wall_offset

    # -- a request's life ------------------------------------------------------------------
    def refused(self, outcome: str, priority: int, request_id: str = "",
                trace_context: dict[str, str] | None = None) -> None:
        """A request refused at admission is a trace too: one SERVER span, in error, that says why
        (an overloaded server's refusals are what its operator looks for)."""
        from opentelemetry.trace import Status, StatusCode
        parent = self._w3c.extract(trace_context) if trace_context else None
        span = self.tracer.start_span(
            "generate", context=parent, kind=self._trace.SpanKind.SERVER,
            attributes={"tessera.request_id": request_id, "tessera.model": self.model,
                        "tessera.priority": priority, "tessera.outcome": outcome})
        span.set_status(Status(StatusCode.ERROR, f"refused at admission: {outcome}"))
        span.end()

    def admitted(self, request: Request) -> None:
        parent = self._w3c.extract(request.trace_context) if request.trace_context else None
        root = self.tracer.start_span(
            "generate", context=parent, kind=self._trace.SpanKind.SERVER, start_time=self._ns(request.created),
            attributes={"tessera.request_id": request.id, "tessera.model": self.model,
                        "tessera.priority": request.priority})
        if root.is_recording():
            request.trace = _Trace(root)

    def queued(self, op: str, request: Request, state: StageState, rows: int) -> None:
        t = request.trace
        if t is None:
            return
        attributes = {"tessera.op": op, "tessera.model": self.model, "tessera.rows": rows}
        if op in self.precision:
            attributes["tessera.precision"] = self.precision[op]
        span = self.tracer.start_span(op, context=self._trace.set_span_in_context(t.root),
                                      start_time=self._ns(state.arrived), attributes=attributes)
        carrier: dict[str, str] = {}
        self._w3c.inject(carrier, context=self._trace.set_span_in_context(span))
        t.stages[op] = _Stage(span, carrier)

    def context(self, op: str, request: Request) -> dict[str, str] | None:
        t = request.trace
        stage = t.stages.get(op) if t is not None else None
        return stage.carrier if stage is not None else None

    def batched(self, op: str, worker: Worker, tasks: Sequence[RowTask], start: float) -> None:
        for stage, rows in self._by_request(op, tasks):
            stage.span.add_event("batched", {"tessera.worker.index": worker.index, "tessera.batch_size": len(tasks),
                                             "tessera.rows": rows}, timestamp=self._ns(start))
            self._on_worker(stage, worker)
            stage.batch_size = max(stage.batch_size, len(tasks))

    def joined(self, op: str, worker: Worker, tasks: Sequence[RowTask], start: float) -> None:
        for stage, rows in self._by_request(op, tasks):
            stage.span.add_event("admitted", {"tessera.worker.index": worker.index, "tessera.rows": rows},
                                 timestamp=self._ns(start))
            self._on_worker(stage, worker)

    def evicted(self, op: str, worker: Any, tasks: Sequence[RowTask], reason: str) -> None:
        for stage, rows in self._by_request(op, tasks):
            stage.span.add_event("evicted", {"tessera.reason": reason, "tessera.rows": rows})

    def computed(self, call: Call) -> None:
        for stage, _ in self._by_request(call.op, call.tasks):
            stage.compute_s += call.seconds
            stage.calls += 1
            stage.steps += call.steps
            if call.steps:
                stage.batch_size = max(stage.batch_size, len(call.tasks))
        for record in call.spans:  # timed on the worker, under the context its call carried
            attributes = {**record.attributes, "tessera.op": call.op, "tessera.batch_size": len(call.tasks)}
            if call.op in self.precision:
                attributes["tessera.precision"] = self.precision[call.op]
            node = getattr(call.worker, "node_id", None)
            if node:
                attributes["tessera.node"] = node
            span = self.tracer.start_span(record.name, context=self._w3c.extract(record.parent),
                                          start_time=record.start_ns, attributes=attributes)
            span.end(end_time=record.end_ns)

    def stage_done(self, op: str, request: Request, state: StageState) -> None:
        t = request.trace
        stage = t.stages.pop(op, None) if t is not None else None
        if stage is None:
            return
        first = state.first_start if state.first_start is not None else state.finished
        stage.span.set_attributes({
            "tessera.queue_ms": 1000 * (first - state.arrived), "tessera.compute_ms": 1000 * (state.finished - first),
            "tessera.calls": stage.calls, "tessera.batch_size": stage.batch_size})
        if stage.steps:
            stage.span.set_attribute("tessera.steps", stage.steps)
        stage.span.end(end_time=self._ns(state.finished))

    def finished(self, request: Request, result: Result) -> None:
        t = request.trace
        if t is None:
            return
        t.root.set_attribute("tessera.total_ms", result.total_ms)
        self._end(t)

    def failed(self, request: Request, error: EngineError, outcome: str) -> None:
        t = request.trace
        if t is None:
            return
        from opentelemetry.trace import Status, StatusCode
        t.root.set_attribute("tessera.outcome", outcome)
        t.root.set_status(Status(StatusCode.ERROR, str(error)))
        for stage in t.stages.values():
            stage.span.set_status(Status(StatusCode.ERROR, outcome))
            stage.span.end()
        t.stages.clear()
        self._end(t)

    # -- helpers ---------------------------------------------------------------------------
    def _end(self, t: _Trace) -> None:
        t.root.end()

    def _by_request(self, op: str, tasks: Sequence[RowTask]) -> list[tuple[_Stage, int]]:
        """The traced requests among `tasks`, each once, with how many of its rows are there."""
        seen: dict[int, list] = {}
        for task in tasks:
            t = task.request.trace
            if t is None:
                continue
            stage = t.stages.get(op)
            if stage is None:
                continue
            entry = seen.setdefault(id(stage), [stage, 0])
            entry[1] += 1
        return [(stage, rows) for stage, rows in seen.values()]

    def _on_worker(self, stage: _Stage, worker: Worker) -> None:
        attributes = {"tessera.worker.index": worker.index, "tessera.device": worker.device,
                      "tessera.worker.placement": worker.placement}
        node = getattr(worker, "node_id", None)
        if node:
            attributes["tessera.node"] = node
        stage.span.set_attributes(attributes)
