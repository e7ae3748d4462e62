"""The HTTP/JSON front door: the proto3 JSON of the gRPC messages, the same engine, the same errors."""
from __future__ import annotations

import asyncio
import base64
import json
import logging

import grpc
import pytest
from google.protobuf import json_format

from tessera.server.engine import Cancelled, InvalidInput
from tessera.server.http.app import _worded_for_json
from tessera.v1 import image_generation_pb2 as pb
from tessera.v1 import image_generation_pb2_grpc as pb_grpc
from tests.server.engine.toy_ops import until
from tests.server.http.conftest import app_config, http_serving, serving, sse_events
from tests.server.rpc.conftest import paced_sampler

PROMPT = "a small red circle in the top left on a blue background"


async def test_generate_answers_proto3_json_best_first(http_served):
    _, http = http_served
    reply = await http.post("/v1/generate", json={"prompt": PROMPT, "numImages": 2, "numCandidates": 4,
                                                  "seed": "5", "requestId": "web-1"})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    assert reply.headers["x-request-id"] == "web-1"
    body = reply.json()
    assert body["requestId"] == "web-1"
    images = body["images"]
    assert len(images) == 2
    assert all(base64.b64decode(im["png"]).startswith(b"\x89PNG") for im in images)
    assert all(isinstance(im["seed"], str) and int(im["seed"]) > 0 for im in images)  # uint64 as a string
    assert [im["clipScore"] for im in images] == sorted((im["clipScore"] for im in images), reverse=True)
    assert {t["stage"] for t in body["timings"]} == {"tokenize", "sample", "decode", "clip_text", "rerank"}
    # snake_case names are accepted too, as every proto3 JSON parser does
    again = await http.post("/v1/generate", json={"prompt": PROMPT, "num_images": 2, "num_candidates": 4, "seed": 5})
    assert [im["png"] for im in again.json()["images"]] == [im["png"] for im in images]


async def test_same_seed_gives_the_same_png_bytes_over_http_and_grpc(http_served):
    server, http = http_served
    reply = await http.post("/v1/generate", json={"prompt": PROMPT, "numImages": 2, "numCandidates": 4,
                                                  "seed": "77"})
    over_http = [base64.b64decode(im["png"]) for im in reply.json()["images"]]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        over_grpc = await pb_grpc.ImageGenerationStub(channel).Generate(
            pb.GenerateRequest(prompt=PROMPT, num_images=2, num_candidates=4, seed=77))
    assert over_http == [im.png for im in over_grpc.images]


async def test_an_image_seed_regenerates_that_image(http_served):
    _, http = http_served
    best = (await http.post("/v1/generate", json={"prompt": PROMPT, "numCandidates": 4})).json()["images"][0]
    alone = await http.post("/v1/generate", json={"prompt": PROMPT, "numCandidates": 1, "seed": best["seed"]})
    assert alone.json()["images"][0]["png"] == best["png"]


async def test_stream_sends_progress_with_previews_then_one_result(http_served):
    _, http = http_served
    async with http.stream("POST", "/v1/generate:stream", json={
            "prompt": PROMPT, "numCandidates": 2, "seed": "3", "previewEvery": 16}) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        events = sse_events([line async for line in reply.aiter_lines()])
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "result" and kinds.count("result") == 1 and set(kinds[:-1]) == {"progress"}
    progress = [json.loads(data)["progress"] for kind, data in events[:-1]]
    sampler = [p for p in progress if p["stage"] == "sample"]
    assert sampler[-1]["completed"] == sampler[-1]["total"] == 2 * 64
    previews = [base64.b64decode(p["previewPng"]) for p in sampler if "previewPng" in p]
    assert previews and all(p.startswith(b"\x89PNG") for p in previews)
    result = json.loads(events[-1][1])["result"]
    assert len(result["images"]) == 1


async def test_info_is_get_info_as_json(http_served):
    server, http = http_served
    reply = await http.get("/v1/info")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        info = await pb_grpc.ImageGenerationStub(channel).GetInfo(pb.GetInfoRequest())
    assert reply.json() == json_format.MessageToDict(info)
    assert reply.json()["limits"]["maxNumImages"] == 16
    assert {t["en"] for t in reply.json()["shapes"]["vocabulary"]["colors"]} >= {"red", "blue"}
    assert reply.json()["vocabulary"] == reply.json()["shapes"]["vocabulary"]  # the deprecated field, for old pages


@pytest.mark.parametrize("body, words", [
    (b"{not json", "not valid JSON"),
    (b"", "must be a JSON object"),
    (b"[1, 2]", "must be a JSON object"),
    (b"\xff\xfe", "not UTF-8"),
    (json.dumps({"prompt": PROMPT, "colour": "red"}).encode(), "colour"),
    (json.dumps({"prompt": 7}).encode(), "prompt"),
    (json.dumps({"prompt": PROMPT, "numImages": "two"}).encode(), "numImages"),
    (json.dumps({"prompt": PROMPT, "numImages": -1}).encode(), "numImages"),
    (json.dumps({"prompt": PROMPT, "seed": "1e99"}).encode(), "seed"),
    (json.dumps({"prompt": ""}).encode(), "prompt is empty"),
    (json.dumps({"prompt": PROMPT, "numImages": 4, "numCandidates": 2}).encode(), "at least numImages"),
    (json.dumps({"prompt": PROMPT, "topP": 1.5}).encode(), "topP must be in (0, 1]"),
    (json.dumps({"prompt": PROMPT, "guidanceScale": -2.0}).encode(), "guidanceScale must be in"),
    (json.dumps({"prompt": PROMPT, "previewEvery": 4}).encode(), "previewEvery applies to GenerateStream only"),
    (json.dumps({"prompt": PROMPT, "requestId": "r" * 129}).encode(), "requestId is 129 characters"),
])
async def test_a_bad_request_is_400_with_a_sentence(http_served, body, words):
    _, http = http_served
    reply = await http.post("/v1/generate", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert words in reply.json()["message"]


@pytest.mark.parametrize("json_fields, fields, over_http, over_grpc", [
    ({"numImages": 17}, {"num_images": 17}, "numImages is 17; the limit is 16", "num_images is 17; the limit is 16"),
    ({"numImages": 4, "numCandidates": 2}, {"num_images": 4, "num_candidates": 2},
     "numCandidates (2) must be at least numImages (4)", "num_candidates (2) must be at least num_images (4)"),
])
async def test_the_message_is_grpcs_with_the_fields_named_as_each_door_names_them(
        http_served, json_fields, fields, over_http, over_grpc):
    """The same sentence on both doors; each names a field the way its callers spell it."""
    server, http = http_served
    reply = await http.post("/v1/generate", json={"prompt": PROMPT, **json_fields})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.ImageGenerationStub(channel).Generate(pb.GenerateRequest(prompt=PROMPT, **fields))
    assert (reply.status_code, reply.json()["message"]) == (400, over_http)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, over_grpc)


def test_only_whole_field_names_are_reworded_for_json():
    """A field name inside a longer word (a configuration key) is left as it is."""
    exc = InvalidInput("num_images is 17; raise server.limits.max_num_images or num_images_total",
                       fields=("num_images",))
    assert _worded_for_json(exc) == "numImages is 17; raise server.limits.max_num_images or num_images_total"
    assert _worded_for_json(InvalidInput("num_images is 17")) == "num_images is 17"  # names no fields


async def test_stream_refuses_bad_input_with_a_status_not_an_event(http_served):
    _, http = http_served
    reply = await http.post("/v1/generate:stream", json={"prompt": "  "})
    assert reply.status_code == 400 and "empty" in reply.json()["message"]


async def test_overload_is_429_and_shutting_down_is_503(http_served):
    server, http = http_served
    limit = server.engine.config.max_inflight
    server.engine.config.max_inflight = 0
    try:
        reply = await http.post("/v1/generate", json={"prompt": PROMPT})
        assert reply.status_code == 429 and "capacity" in reply.json()["message"]
    finally:
        server.engine.config.max_inflight = limit
    assert (await http.get("/readyz")).json() == {"status": "SERVING"}
    server.engine.accepting = False
    try:
        reply = await http.post("/v1/generate", json={"prompt": PROMPT})
        assert reply.status_code == 503 and "shutting down" in reply.json()["message"]
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()) == (503, {"status": "NOT_SERVING"})
    finally:
        server.engine.accepting = True


async def test_grpc_timeout_header_sets_the_deadline(http_served):
    _, http = http_served
    reply = await http.post("/v1/generate", json={"prompt": PROMPT, "numCandidates": 64},
                            headers={"grpc-timeout": "1m"})
    assert reply.status_code == 504 and "deadline" in reply.json()["message"]
    bad = await http.post("/v1/generate", json={"prompt": PROMPT}, headers={"grpc-timeout": "soon"})
    assert bad.status_code == 400 and "Grpc-Timeout" in bad.json()["message"]


async def test_stage_failure_is_500_and_names_the_stage(http_served, monkeypatch):
    from tessera.ops.rerank import RerankOp

    def broken(self, rows):
        raise RuntimeError("CLIP weights on fire")
    monkeypatch.setattr(RerankOp, "process", broken)
    _, http = http_served
    reply = await http.post("/v1/generate", json={"prompt": PROMPT})
    assert reply.status_code == 500 and "'rerank'" in reply.json()["message"]
    async with http.stream("POST", "/v1/generate:stream", json={"prompt": PROMPT}) as stream:
        events = sse_events([line async for line in stream.aiter_lines()])
    kind, data = events[-1]
    assert kind == "error" and json.loads(data)["code"] == grpc.StatusCode.INTERNAL.value[0]
    assert "'rerank'" in json.loads(data)["message"]


async def test_bearer_token_guards_the_api_but_not_the_page(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TESSERA_TEST_TOKEN", "s3cret")
    config = app_config(tiny_model_dir, token_env="TESSERA_TEST_TOKEN")
    async with http_serving(config) as (_, http):
        for method, path in (("POST", "/v1/generate"), ("POST", "/v1/generate:stream"), ("GET", "/v1/info")):
            for headers in ({}, {"authorization": "Bearer wrong"}):
                reply = await http.request(method, path, json={"prompt": PROMPT}, headers=headers)
                assert reply.status_code == 401 and "bearer token" in reply.json()["message"]
        good = await http.post("/v1/generate", json={"prompt": PROMPT}, headers={"authorization": "Bearer s3cret"})
        assert good.status_code == 200 and len(good.json()["images"]) == 1
        assert (await http.get("/")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/openapi.json")).json()["security"] == [{"bearer": []}]


def watch_cancellations(engine) -> asyncio.Event:
    """Set when the engine fails a request as Cancelled (the caller went away)."""
    cancelled = asyncio.Event()
    fail = engine.fail

    def spy(request, error):
        if isinstance(error, Cancelled):
            cancelled.set()
        fail(request, error)
    engine.fail = spy
    return cancelled


async def test_leaving_the_stream_cancels_the_engine_request(http_served, monkeypatch):
    steps = paced_sampler(monkeypatch)
    steps.allow(1)  # one step: one progress event, then the sampler holds the request
    server, http = http_served
    cancelled = watch_cancellations(server.engine)
    async with http.stream("POST", "/v1/generate:stream", json={"prompt": PROMPT, "numCandidates": 8}) as reply:
        async for line in reply.aiter_lines():
            if line.startswith("data:") and '"stage":"sample"' in line:
                break
    await asyncio.wait_for(cancelled.wait(), 30)
    assert not server.engine.requests
    reg = server.engine.metrics.registry
    await until(lambda: reg.get_sample_value("tessera_requests_total", {"outcome": "cancelled"}),
                "the stream is counted as its handler ends")
    assert reg.get_sample_value("tessera_requests_total", {"outcome": "cancelled"}) == 1
    steps.free()


async def test_leaving_a_unary_call_cancels_the_engine_request(http_served, monkeypatch):
    steps = paced_sampler(monkeypatch)  # the sampler holds the request until the caller has left
    server, _ = http_served
    cancelled = watch_cancellations(server.engine)
    admitted = asyncio.Event()
    submit = server.engine.submit

    def spy(*args, **kw):
        request = submit(*args, **kw)
        admitted.set()
        return request
    server.engine.submit = spy
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    body = json.dumps({"prompt": PROMPT, "numCandidates": 8}).encode()
    writer.write(b"POST /v1/generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    await asyncio.wait_for(admitted.wait(), 30)
    writer.close()
    await asyncio.wait_for(cancelled.wait(), 30)
    assert not server.engine.requests
    steps.free()


async def test_http_port_minus_one_turns_http_off(tiny_model_dir):
    async with serving(app_config(tiny_model_dir, http_port=-1)) as (server, client):
        assert server.http_port is None
        assert len((await client.generate(PROMPT)).images) == 1  # gRPC serves on


async def test_every_http_generation_call_is_counted_once_by_outcome(http_served):
    server, http = http_served
    assert (await http.post("/v1/generate", json={"prompt": PROMPT})).status_code == 200
    assert (await http.post("/v1/generate", json={"prompt": ""})).status_code == 400
    async with http.stream("POST", "/v1/generate:stream", json={"prompt": PROMPT}) as reply:
        assert sse_events([line async for line in reply.aiter_lines()])[-1][0] == "result"
    assert (await http.post("/v1/generate:stream", content=b"{")).status_code == 400
    reg = server.engine.metrics.registry
    total = lambda: sum(reg.get_sample_value("tessera_requests_total", {"outcome": o}) or 0 for o in ("ok", "invalid_input"))
    await until(lambda: total() >= 4, "every call is counted as its handler ends")
    counts = {o: reg.get_sample_value("tessera_requests_total", {"outcome": o}) for o in ("ok", "invalid_input")}
    assert counts == {"ok": 2, "invalid_input": 2}


@pytest.mark.taken_port
async def test_a_busy_http_port_fails_the_start_naming_it(tiny_model_dir):
    import socket

    from tessera.server.app import PortInUse, TesseraServer
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = TesseraServer(app_config(tiny_model_dir, http_port=port))
        with pytest.raises(PortInUse, match=f"HTTP on 127.0.0.1:{port}"):
            await server.start()
        assert server.engine is None  # refused before any model loaded
        await server.stop(0)


async def test_readiness_follows_the_engines_health(http_served, monkeypatch):
    """503 while an OP has no live worker (the engine's own health, as gRPC health reports it)."""
    server, http = http_served
    assert (await http.get("/readyz")).status_code == 200
    monkeypatch.setattr(type(server.engine), "serving", property(lambda self: False))
    ready = await http.get("/readyz")
    assert (ready.status_code, ready.json()) == (503, {"status": "NOT_SERVING"})


INTERNALS = ("Available Fields", "invalid literal", "Failed to parse", "Value out of range", "Couldn't parse",
             "expected string or bytes-like", "GenerateRequest.", "tessera.v1", "Traceback")


async def test_a_field_it_cannot_take_is_named_as_the_json_names_it(http_served):
    _, http = http_served
    cases = [
        ({"prompt": PROMPT, "colour": "red"}, '"colour" is not a field of GenerateRequest; the fields are prompt, '
                                              "numImages, numCandidates"),
        # a count names this server's limit (server.limits), not the uint32 the wire could carry
        ({"prompt": PROMPT, "numImages": "two"}, 'numImages must be a whole number from 0 to 16 '
                                                 '(0 or absent: the default), got "two"'),
        ({"prompt": PROMPT, "num_images": -1}, "numImages must be a whole number from 0 to 16 "
                                               "(0 or absent: the default), got -1"),
        ({"prompt": PROMPT, "numCandidates": 1.5}, "numCandidates must be a whole number from 0 to 64"),
        ({"prompt": PROMPT, "topK": True}, "topK must be a whole number"),
        ({"prompt": PROMPT, "seed": "1e99"}, "seed must be a whole number from 0 to 18446744073709551615 "
                                             '(a number or a string of digits), got "1e99"'),
        ({"prompt": PROMPT, "seed": -5}, "seed must be a whole number from 0"),
        ({"prompt": 7}, "prompt must be a string, got a number"),
        ({"prompt": [PROMPT]}, "prompt must be a string, got an array"),
        ({"prompt": PROMPT, "topP": "high"}, 'topP must be a number, got "high"'),
        ({"prompt": PROMPT, "guidanceScale": {"x": 1}}, "guidanceScale must be a number"),
        ({"prompt": PROMPT, "temperature": 1e300}, "temperature is too large for a float"),
        ({"prompt": PROMPT, "numImages": 1, "num_images": 2}, "numImages is given twice (as numImages and num_images)"),
    ]
    for body, message in cases:
        reply = await http.post("/v1/generate", json=body)
        assert reply.status_code == 400, body
        assert reply.json()["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert message in reply.json()["message"], (body, reply.json()["message"])
        assert not any(words in reply.json()["message"] for words in INTERNALS), reply.json()["message"]
    # what proto3 JSON allows still goes through: 64-bit integers as strings, null for the default
    ok = await http.post("/v1/generate", json={"prompt": PROMPT, "seed": "7", "numImages": None, "topK": "3"})
    assert ok.status_code == 200 and ok.json()["images"][0]["seed"] == "7"


@pytest.mark.parametrize("method, path, status, code, words", [
    ("GET", "/v1/nowhere", 404, grpc.StatusCode.NOT_FOUND, "no such path: /v1/nowhere"),
    ("GET", "/static/nothing.js", 404, grpc.StatusCode.NOT_FOUND, "no such path"),
    ("GET", "/v1/generate", 405, grpc.StatusCode.UNIMPLEMENTED, "/v1/generate does not take GET; it takes POST"),
    ("DELETE", "/v1/info", 405, grpc.StatusCode.UNIMPLEMENTED, "does not take DELETE"),
])
async def test_an_unknown_path_or_method_answers_the_json_error(http_served, method, path, status, code, words):
    _, http = http_served
    reply = await http.request(method, path)
    assert reply.status_code == status and reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["code"] == code.value[0] and words in body["message"] and body["details"] == []


async def test_each_request_ends_in_one_log_line_whichever_door(http_served, caplog):
    server, http = http_served
    with caplog.at_level(logging.INFO, logger="tessera.rpc"):
        await http.post("/v1/generate", json={"prompt": PROMPT, "numImages": 2, "numCandidates": 2,
                                              "requestId": "h-ok"})
        await http.post("/v1/generate", json={"prompt": PROMPT, "numImages": 17, "requestId": "h-bad"})
        await http.post("/v1/generate", json={"prompt": PROMPT, "numImages": "x"}, headers={"x-request-id": "h-json"})
        async with http.stream("POST", "/v1/generate:stream", json={"prompt": PROMPT, "requestId": "h-sse"}) as reply:
            [line async for line in reply.aiter_lines()]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await pb_grpc.ImageGenerationStub(channel).Generate(
                pb.GenerateRequest(prompt=PROMPT, num_images=3, num_candidates=3, request_id="g-ok"))
            with pytest.raises(grpc.aio.AioRpcError):
                await pb_grpc.ImageGenerationStub(channel).Generate(pb.GenerateRequest(prompt="", request_id="g-bad"))
        await until(lambda: sum(r.getMessage().startswith("request ") for r in caplog.records) >= 6, "six lines")
    lines = {r.request_id: r for r in caplog.records if r.name == "tessera.rpc" and r.getMessage().startswith("request ")}
    assert {rid: (r.outcome, r.images) for rid, r in lines.items()} == {
        "h-ok": ("ok", 2), "h-bad": ("INVALID_ARGUMENT", 0), "h-json": ("INVALID_ARGUMENT", 0),
        "h-sse": ("ok", 1), "g-ok": ("ok", 3), "g-bad": ("INVALID_ARGUMENT", 0)}
    assert all(r.levelno == logging.INFO for r in lines.values())
    assert lines["g-ok"].getMessage().startswith("request g-ok ok in ") and lines["g-ok"].getMessage().endswith(
        " ms, 3 images, model model")  # the served model's name: its files' (tiny_model_dir is .../model)
    assert {rid: r.model for rid, r in lines.items()} == {
        "h-ok": "model", "h-bad": "model", "h-json": "", "h-sse": "model", "g-ok": "model", "g-bad": "model"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml"])
async def test_a_body_not_sent_as_json_is_415_naming_application_json(http_served, content_type):
    # curl's -d alone sends the form type; text/plain is what a hand-written fetch often sends.
    _, http = http_served
    body = json.dumps({"prompt": PROMPT}).encode()
    for path in ("/v1/generate", "/v1/generate:stream"):
        reply = await http.post(path, content=body, headers={"content-type": content_type})
        assert reply.status_code == 415, (path, reply.text)
        assert reply.json()["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "Content-Type: application/json" in reply.json()["message"]


@pytest.mark.parametrize("headers", [{"content-type": "application/json"},
                                     {"content-type": "application/json; charset=utf-8"},
                                     {"content-type": "Application/JSON"},
                                     {}])  # no type at all: read as JSON
async def test_json_in_any_spelling_or_with_no_type_is_read(http_served, headers):
    _, http = http_served
    reply = await http.post("/v1/generate", content=json.dumps({"prompt": PROMPT}).encode(), headers=headers)
    assert reply.status_code == 200 and len(reply.json()["images"]) == 1


async def test_zero_counts_ask_for_the_defaults(http_served):
    # proto3: 0 is an absent field; numImages 0 is 1 image, numCandidates 0 is numImages
    _, http = http_served
    reply = await http.post("/v1/generate", json={"prompt": PROMPT, "numImages": 0, "numCandidates": 0})
    assert reply.status_code == 200 and len(reply.json()["images"]) == 1
    two = await http.post("/v1/generate", json={"prompt": PROMPT, "numImages": 2, "numCandidates": 0, "seed": "5"})
    indexes = sorted(im.get("candidateIndex", 0) for im in two.json()["images"])  # proto3 JSON leaves 0 out
    assert indexes == [0, 1]  # two candidates sampled, both returned
