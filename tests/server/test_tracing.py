"""OpenTelemetry traces: a request's spans, their parents and attributes, through either door,
through a process worker, and over OTLP to a receiver on loopback."""
from __future__ import annotations

import os
import threading
from concurrent import futures

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from tessera.server.app import TesseraServer
from tessera.server.config import AppConfig, TracingConfig
from tessera.server.tracing import endpoint_of, make_provider
from tessera.v1 import image_generation_pb2 as pb
from tessera.v1 import image_generation_pb2_grpc as pb_grpc
from tests.server.rpc.conftest import raw_config

STAGES = {"tokenize", "clip_text", "sample", "decode", "rerank"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def in_memory(ratio: float | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = make_provider(TracingConfig(sample_ratio=ratio))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def started(raw: dict, provider) -> TesseraServer:
    server = TesseraServer(AppConfig.from_dict(raw), tracer_provider=provider)
    await server.start()
    return server


async def generate(server: TesseraServer, metadata=()) -> pb.GenerateResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return await pb_grpc.ImageGenerationStub(channel).Generate(
            pb.GenerateRequest(prompt="a red circle", num_candidates=2, seed=7), metadata=metadata, timeout=60)


def by_name(spans) -> dict[str, list]:
    out: dict[str, list] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


async def test_one_request_is_one_trace_a_span_per_stage_and_the_workers_calls_under_them(tiny_model_dir):
    provider, exporter = in_memory()
    raw = raw_config(tiny_model_dir)
    raw["graph"]["ops"]["decode"]["mode"] = "process"  # the context crosses to a child process
    server = await started(raw, provider)
    try:
        await generate(server)
    finally:
        await server.stop(2.0)
    spans = by_name(exporter.get_finished_spans())
    [root] = spans["generate"]
    assert root.parent is None and root.kind.name == "SERVER"
    assert root.attributes["tessera.model"] == server.engine.name  # the served model's name
    assert {span.context.trace_id for group in spans.values() for span in group} == {root.context.trace_id}
    for stage in STAGES:
        [span] = spans[stage]
        assert span.parent.span_id == root.context.span_id, stage
        a = span.attributes
        assert a["tessera.queue_ms"] >= 0 and a["tessera.compute_ms"] >= 0 and a["tessera.calls"] >= 1, stage
        assert a["tessera.device"] == "cpu" and a["tessera.worker.index"] == 0 and a["tessera.batch_size"] >= 1
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time
    sample = spans["sample"][0]
    assert sample.attributes["tessera.rows"] == 2 and sample.attributes["tessera.steps"] >= 1
    assert sample.attributes["tessera.precision"] == "float32"
    assert [e.name for e in sample.events][:1] == ["admitted"]
    # The workers' calls, timed where they ran, each under its stage's span.
    for stage in STAGES:
        calls = spans[f"{stage} compute"]
        assert calls and all(c.parent.span_id == spans[stage][0].context.span_id for c in calls), stage
    [decode_call] = spans["decode compute"]
    assert decode_call.attributes["process.pid"] != os.getpid()  # computed in the process worker
    assert decode_call.attributes["host.name"] and decode_call.attributes["tessera.rows"] == 2
    assert all(c.attributes["process.pid"] == os.getpid() for c in spans["sample compute"])
    assert sum(c.attributes["tessera.steps"] for c in spans["sample compute"]) == sample.attributes["tessera.steps"]


async def test_a_callers_traceparent_is_the_parent_over_grpc(tiny_model_dir):
    provider, exporter = in_memory(ratio=0.0)  # only the callers' sampled traces
    server = await started(raw_config(tiny_model_dir), provider)
    try:
        await generate(server)  # no traceparent, ratio 0: no trace
        assert exporter.get_finished_spans() == ()
        await generate(server, metadata=(("traceparent", TRACEPARENT), ("tracestate", "vendor=1")))
    finally:
        await server.stop(2.0)
    [root] = by_name(exporter.get_finished_spans())["generate"]
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert format(root.parent.span_id, "016x") == PARENT_ID and root.parent.is_remote
    assert root.context.trace_state.get("vendor") == "1"


async def test_a_callers_traceparent_is_the_parent_over_http(tiny_model_dir):
    provider, exporter = in_memory()
    server = await started(raw_config(tiny_model_dir), provider)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=60) as http:
            answer = await http.post("/v1/generate", json={"prompt": "a red circle", "seed": 3},
                                     headers={"traceparent": TRACEPARENT})
            assert answer.status_code == 200
    finally:
        await server.stop(2.0)
    spans = by_name(exporter.get_finished_spans())
    [root] = spans["generate"]
    assert format(root.context.trace_id, "032x") == TRACE_ID and format(root.parent.span_id, "016x") == PARENT_ID
    assert STAGES <= set(spans)


async def test_a_request_refused_at_admission_is_a_span_in_error_under_the_callers_trace(tiny_model_dir):
    provider, exporter = in_memory(ratio=0.0)
    server = await started(raw_config(tiny_model_dir), provider)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # outside graph.priority_range, [-10, 10]
                await pb_grpc.ImageGenerationStub(channel).Generate(
                    pb.GenerateRequest(prompt="a red circle", priority=99, request_id="too-urgent"), timeout=60,
                    metadata=(("traceparent", TRACEPARENT),))
    finally:
        await server.stop(2.0)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [root] = exporter.get_finished_spans()  # no stage span: it never reached one
    assert root.name == "generate" and format(root.context.trace_id, "032x") == TRACE_ID
    assert format(root.parent.span_id, "016x") == PARENT_ID
    assert root.status.status_code.name == "ERROR" and "invalid_input" in root.status.description
    assert root.attributes["tessera.outcome"] == "invalid_input" and root.attributes["tessera.priority"] == 99
    assert root.attributes["tessera.request_id"] == "too-urgent"


def test_tracing_is_off_without_an_endpoint_and_the_standard_variables_turn_it_on(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert endpoint_of(TracingConfig()) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    assert endpoint_of(TracingConfig()) == "http://collector:4317"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317")
    assert endpoint_of(TracingConfig()) == "http://traces:4317"
    assert endpoint_of(TracingConfig(otlp_traces_endpoint="http://mine:4317")) == "http://mine:4317"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "painter")
    assert make_provider(TracingConfig()).resource.attributes["service.name"] == "painter"
    assert make_provider(TracingConfig(service_name="tessera-eu")).resource.attributes["service.name"] == "tessera-eu"
    sampler = make_provider(TracingConfig(sample_ratio=0.25)).sampler
    assert isinstance(sampler, ParentBased) and isinstance(sampler._root, TraceIdRatioBased)


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver, as a collector is one."""

    def __init__(self):
        self.names: list[str] = []
        self.got = threading.Event()

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            for scope in resource_spans.scope_spans:
                self.names += [span.name for span in scope.spans]
        self.got.set()
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_spans_reach_an_otlp_receiver_over_the_real_protocol(tiny_model_dir, monkeypatch):
    receiver = _Receiver()
    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))  # apart from the server's loop
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    raw = raw_config(tiny_model_dir)
    raw["tracing"] = {"otlp_traces_endpoint": f"http://127.0.0.1:{port}", "service_name": "tessera-test"}
    try:
        server = await started(raw, None)
        try:
            await generate(server)
        finally:
            await server.stop(2.0)  # flushes the batched spans
        assert receiver.got.is_set()
        assert {"generate", *STAGES} <= set(receiver.names)
    finally:
        collector.stop(0)


async def test_with_tracing_off_the_engine_has_no_tracing_observer(tiny_model_dir, monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    server = await started(raw_config(tiny_model_dir), None)
    try:
        names = [type(o).__name__ for o in server.engine.observers.observers]
        assert names == ["MetricsObserver", "LogObserver"]
        response = await generate(server)
        assert response.images
    finally:
        await server.stop(2.0)
