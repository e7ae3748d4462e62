"""Several models in one server: a request names one; models load, are replaced and unload while
the server serves, and nothing admitted is dropped (server/models.py, the admin API)."""
from __future__ import annotations

import asyncio
import copy
import gc
import re
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.server.app import TesseraServer
from tessera.server.config import AppConfig
from tessera.server.defaults import DEFAULT_CONFIG
from tessera.server.engine import ConfigError
from tessera.server.main import load_config
from tessera.v1 import image_generation_pb2 as pb
from tessera.v1 import image_generation_pb2_grpc as pb_grpc
from tests.server.engine.toy_ops import until

TOKEN = "s3cret-admin-token"
PROMPT = "a small red circle in the top left on a blue background"


def two_models(tiny_model_dir, tmp_path: Path | None = None, **server) -> AppConfig:
    """The tiny model as `tiny` and the bundled model as `shapes`, every port picked free."""
    raw = copy.deepcopy(DEFAULT_CONFIG)
    raw.pop("model")
    raw["models"] = [{"name": "tiny", "path": str(tiny_model_dir)}, {"name": "shapes"}]
    raw["server"].update({"port": 0, "metrics_port": 0, "http_port": 0, **server})
    if tmp_path is not None:  # the admin API, behind a token
        (tmp_path / "token").write_text(TOKEN)
        raw["server"].update(admin=True, token_file=str(tmp_path / "token"))
    raw["graph"]["shutdown_grace_s"] = 5.0
    return AppConfig.from_dict(raw)


def one_model(path, name: str | None = None) -> AppConfig:
    raw = copy.deepcopy(DEFAULT_CONFIG)
    raw["model"] = {"path": None if path is None else str(path)}
    raw["server"].update({"port": 0, "metrics_port": -1, "http_port": -1})
    return AppConfig.from_dict(raw)


class Served:
    """A started server and gRPC stubs onto it (with the admin token when there is one)."""

    def __init__(self, server: TesseraServer, channel: grpc.aio.Channel, token: str | None):
        self.server, self.channel = server, channel
        self.meta = (("authorization", f"Bearer {token}"),) if token else None
        self.gen = pb_grpc.ImageGenerationStub(channel)
        self.admin = pb_grpc.ModelControlStub(channel)

    async def generate(self, model: str = "", seed: int = 7, **fields) -> pb.GenerateResponse:
        request = pb.GenerateRequest(prompt=PROMPT, num_images=1, num_candidates=2, seed=seed, model=model, **fields)
        return await self.gen.Generate(request, metadata=self.meta, timeout=120)

    async def pngs(self, model: str = "", seed: int = 7) -> list[bytes]:
        return [im.png for im in (await self.generate(model, seed)).images]


class serve:
    def __init__(self, config: AppConfig, token: str | None = None):
        self.config, self.token = config, token

    async def __aenter__(self) -> Served:
        self.server = TesseraServer(self.config)
        port = await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        return Served(self.server, self.channel, self.token)

    async def __aexit__(self, *exc) -> None:
        await self.channel.close()
        await self.server.stop(2.0)


@pytest.fixture(scope="module")
def alone(tiny_model_dir) -> dict[str, list[bytes]]:
    """Each model's images for seeds 7 and 8 from a server that serves only that model."""
    async def images(path) -> list[list[bytes]]:
        async with serve(one_model(path)) as s:
            return [await s.pngs(seed=7), await s.pngs(seed=8)]
    return {"tiny": asyncio.run(images(tiny_model_dir)), "shapes": asyncio.run(images(None))}


async def test_each_model_gives_the_images_a_server_of_it_alone_gives(tiny_model_dir, alone):
    async with serve(two_models(tiny_model_dir)) as s:
        listed = await s.gen.ListModels(pb.ListModelsRequest())
        assert [(m.name, m.version, m.model_kind, m.state) for m in listed.models] == [
            ("tiny", "1", "tessera", "serving"), ("shapes", "1", "tessera", "serving")]
        # Both, concurrently: every request succeeds, each with its own model's images.
        calls = [s.pngs(model, seed) for _ in range(3) for model in ("tiny", "shapes") for seed in (7, 8)]
        got = await asyncio.gather(*calls)
        want = [alone[model][i] for model in ("tiny", "shapes") for i in (0, 1)] * 3
        assert got == want
        assert await s.pngs("", 7) == alone["tiny"][0]  # no name: the first model
        tiny, shapes = [await s.gen.GetInfo(pb.GetInfoRequest(model=m)) for m in ("tiny", "shapes")]
        assert (await s.gen.GetInfo(pb.GetInfoRequest())).image_width == tiny.image_width
        assert (tiny.image_width, shapes.image_width) == (s.server.models.get("tiny").info["image_width"], 64)


async def test_an_unknown_model_is_not_found_naming_the_models_served(tiny_model_dir):
    async with serve(two_models(tiny_model_dir)) as s:
        for call in (s.generate("mega"), s.gen.GetInfo(pb.GetInfoRequest(model="mega"))):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert "'mega'" in info.value.details() and "'tiny', 'shapes'" in info.value.details()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.server.http_port}", timeout=60) as http:
            reply = await http.post("/v1/generate", json={"prompt": PROMPT, "model": "mega"})
            assert reply.status_code == 404 and reply.json()["code"] == grpc.StatusCode.NOT_FOUND.value[0]
            assert (await http.get("/v1/info", params={"model": "mega"})).status_code == 404
            models = (await http.get("/v1/models")).json()["models"]
            assert [m["name"] for m in models] == ["tiny", "shapes"] and models[1]["modelKind"] == "tessera"
            reply = await http.post("/v1/generate", json={"prompt": PROMPT, "model": "shapes", "seed": "7",
                                                          "numCandidates": 2})
            assert reply.status_code == 200 and reply.json()["images"][0]["width"] == 64


async def test_metrics_carry_each_models_name(tiny_model_dir):
    async with serve(two_models(tiny_model_dir)) as s:
        await asyncio.gather(s.generate("tiny"), s.generate("shapes"), s.generate("shapes", seed=8))
        reg = s.server.registry
        ok = {m: reg.get_sample_value("tessera_engine_requests_total", {"model": m, "outcome": "ok"})
              for m in ("tiny", "shapes")}
        assert ok == {"tiny": 1, "shapes": 2}
        assert reg.get_sample_value("tessera_op_batch_rows_count", {"model": "tiny", "op": "decode"}) >= 1
        assert reg.get_sample_value("tessera_op_live_workers", {"model": "shapes", "op": "sample"}) >= 1
        async with httpx.AsyncClient(timeout=10) as http:
            body = (await http.get(f"http://127.0.0.1:{s.server.metrics_port}/metrics")).text
        labelled = set(re.findall(r'model="([^"]*)"', body))
        assert labelled == {"tiny", "shapes"}  # bounded: one value per model served


async def test_replacing_a_model_under_load_finishes_every_request_on_its_version(tiny_model_dir, alone,
                                                                                  tmp_path):
    async with serve(two_models(tiny_model_dir, tmp_path), TOKEN) as s:
        engine = s.server.models.get("tiny").engine
        load = [asyncio.ensure_future(s.pngs("tiny", 7 + i % 2)) for i in range(8)]
        await until(lambda: len(engine.requests) == 8, "eight requests admitted by tiny's version 1")
        status = await s.admin.Load(pb.LoadModelRequest(name="tiny", model=pb.ModelSection()),
                                    metadata=s.meta, timeout=120)  # the bundled model under tiny's name
        assert (status.name, status.version, status.state) == ("tiny", "2", "serving") and status.load_ms > 0
        after = await s.pngs("tiny", 7)  # the switch is made: new requests get version 2's images
        assert after == alone["shapes"][0]
        assert await asyncio.gather(*load) == [alone["tiny"][i % 2] for i in range(8)]  # in flight: version 1
        await s.server.models.settled()
        assert not engine.stages["sample"].workers[0].op  # version 1 stopped and let go of its OPs
        listed = await s.admin.List(pb.ListModelsRequest(), metadata=s.meta)
        assert [(m.name, m.version) for m in listed.models] == [("tiny", "2"), ("shapes", "1")]


async def test_a_failed_load_leaves_the_old_version_serving(tiny_model_dir, alone, tmp_path):
    async with serve(two_models(tiny_model_dir, tmp_path), TOKEN) as s:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.admin.Load(pb.LoadModelRequest(name="tiny", model=pb.ModelSection(path=str(tmp_path / "nothing"))),
                               metadata=s.meta, timeout=120)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nothing" in info.value.details()
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "config.json").write_text("{ not json")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.server.http_port}", timeout=120,
                                     headers={"authorization": f"Bearer {TOKEN}"}) as http:
            reply = await http.post("/v1/models/tiny:load", json={"path": str(broken)})
            assert reply.status_code == 400, reply.text
            reply = await http.post("/v1/models/tiny:load", json={"path": str(tiny_model_dir), "dtype": "float64"})
            assert reply.status_code == 400 and "dtype" in reply.json()["message"]
        assert s.server.models.get("tiny").version == "1"
        assert await s.pngs("tiny", 7) == alone["tiny"][0]


async def test_a_load_takes_the_models_own_op_overrides_and_refuses_bad_ones_changing_nothing(tiny_model_dir, alone,
                                                                                              tmp_path):
    async with serve(two_models(tiny_model_dir, tmp_path), TOKEN) as s:
        section = pb.ModelSection(path=str(tiny_model_dir), ops={"sample": {"batch_size": 4, "concurrency": 1}})
        status = await s.admin.Load(pb.LoadModelRequest(name="small", model=section), metadata=s.meta, timeout=120)
        assert (status.name, status.state) == ("small", "serving")
        sample = s.server.models.get("small").engine.config.ops["sample"]
        assert (sample.batch_size, sample.concurrency) == (4, 1)
        assert s.server.models.get("tiny").engine.config.ops["sample"].batch_size == 64  # the graph's, untouched
        assert await s.pngs("small", 7) == alone["tiny"][0]  # a smaller batch, the same image
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.server.http_port}", timeout=120,
                                     headers={"authorization": f"Bearer {TOKEN}"}) as http:
            reply = await http.post("/v1/models/other:load",
                                    json={"path": str(tiny_model_dir), "ops": {"decode": {"batch_size": 2}}})
            assert reply.status_code == 200, reply.text
            assert s.server.models.get("other").engine.config.ops["decode"].batch_size == 2
            for ops, says in (({"nope": {"batch_size": 2}}, "nope"), ({"sample": {"batch_size": 0}}, "batch_size"),
                              ({"sample": 3}, "ops.sample")):
                reply = await http.post("/v1/models/small:load", json={"path": str(tiny_model_dir), "ops": ops})
                assert reply.status_code == 400 and says in reply.json()["message"], (ops, reply.text)
        assert [(m.name, m.version) for m in s.server.models] == [("tiny", "1"), ("shapes", "1"), ("small", "1"),
                                                                  ("other", "1")]
        assert s.server.models.get("small").engine.config.ops["sample"].batch_size == 4  # the refused loads: no change


async def test_unloading_lets_requests_in_flight_finish_then_frees_the_memory(tiny_model_dir, alone, tmp_path):
    async with serve(two_models(tiny_model_dir, tmp_path), TOKEN) as s:
        await s.pngs("shapes", 7)
        await s.server.models.settled()
        before = _rss()
        big = {"path": None, "ops": {"sample": {"batch_size": 512}}}  # a large cache: the growth to free
        await s.server.models.load(AppConfig.from_dict({"models": [{"name": "big", **big}]}).served[0])
        loaded = _rss()
        engine = s.server.models.get("big").engine
        inflight = [asyncio.ensure_future(s.pngs("big", 7 + i % 2)) for i in range(4)]
        await until(lambda: len(engine.requests) == 4, "four requests admitted by big")
        status = await s.admin.Unload(pb.UnloadModelRequest(name="big"), metadata=s.meta, timeout=120)
        assert status.state == "unloaded"
        assert await asyncio.gather(*inflight) == [alone["shapes"][i % 2] for i in range(4)]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.generate("big")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        gc.collect()
        freed = _rss()
        assert loaded - before > 100 * 2**20, "the big cache should have grown the process"
        # Back within 10% of what loading it took (allocator pages kept aside).
        assert freed - before <= 0.1 * (loaded - before), (before, loaded, freed)
        assert s.server.registry.get_sample_value("tessera_inflight_requests", {"model": "big"}) is None


async def test_health_serves_while_any_model_serves(tiny_model_dir, tmp_path):
    async with serve(two_models(tiny_model_dir, tmp_path), TOKEN) as s:
        stub = health_pb2_grpc.HealthStub(s.channel)
        check = lambda: stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)  # noqa: E731
        await s.admin.Unload(pb.UnloadModelRequest(name="tiny"), metadata=s.meta, timeout=60)
        assert (await check()).status == health_pb2.HealthCheckResponse.SERVING
        assert await s.pngs() and [m.name for m in (await s.gen.ListModels(pb.ListModelsRequest(),
                                                                           metadata=s.meta)).models] == ["shapes"]
        await s.admin.Unload(pb.UnloadModelRequest(name="shapes"), metadata=s.meta, timeout=60)
        await until(lambda: not s.server.serving(), "no model serves")
        assert (await check()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        await s.admin.Load(pb.LoadModelRequest(name="shapes"), metadata=s.meta, timeout=120)
        assert (await check()).status == health_pb2.HealthCheckResponse.SERVING


async def test_the_admin_api_takes_the_token_and_is_off_unless_asked_for(tiny_model_dir, tmp_path):
    async with serve(two_models(tiny_model_dir, tmp_path), TOKEN) as s:
        for metadata in (None, (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.admin.Unload(pb.UnloadModelRequest(name="tiny"), metadata=metadata, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.server.http_port}", timeout=10) as http:
            assert (await http.post("/v1/models/tiny:unload")).status_code == 401
        assert [m.name for m in s.server.models] == ["tiny", "shapes"]  # nothing changed
    async with serve(two_models(tiny_model_dir)) as s:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.admin.List(pb.ListModelsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # not registered
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.server.http_port}", timeout=10) as http:
            reply = await http.post("/v1/models/tiny:unload")
            assert reply.status_code == 404 and "server.admin" in reply.json()["message"]
            assert "/v1/models/{name}:load" not in (await http.get("/openapi.json")).json()["paths"]
    with pytest.raises(ConfigError, match=r"server\.admin: .*bearer token"):
        AppConfig.from_dict({"server": {"admin": True}})


def test_a_file_of_models_alone_is_a_whole_configuration(tmp_path):
    config = AppConfig.from_dict({"models": [{"name": "mini", "path": "/models/mini", "dtype": "bfloat16"},
                                             {"name": "dalle", "path": "/models/dalle.pt", "bpe_path": "/b.txt",
                                              "ops": {"sample": {"batch_size": 8}}}]})
    assert [m.name for m in config.served] == ["mini", "dalle"]
    first, second = config.graphs
    assert first.ops["sample"].settings["model"] == {"path": "/models/mini"}
    assert first.ops["sample"].settings["dtype"] == "bfloat16" and "dtype" not in second.ops["sample"].settings
    assert second.ops["sample"].settings["model"] == {"path": "/models/dalle.pt", "bpe_path": "/b.txt"} and second.ops["sample"].batch_size == 8
    assert first.ops["sample"].batch_size == DEFAULT_CONFIG["graph"]["ops"]["sample"]["batch_size"]
    assert config.server.port == 50051 and first.output == "rerank"  # the shipped defaults
    with pytest.raises(ConfigError, match=r"models\.1\.name: the name 'mini' is given to two models"):
        AppConfig.from_dict({"models": [{"name": "mini"}, {"name": "mini"}]})
    with pytest.raises(ConfigError, match=r"models\.1\.ops\.smaple: the graph has no OP 'smaple'"):
        AppConfig.from_dict({"models": [{"name": "a"}, {"name": "b", "ops": {"smaple": {}}}]})
    with pytest.raises(ConfigError, match=r"models\.0\.name: must match"):
        AppConfig.from_dict({"models": [{"name": "no spaces"}]})
    with pytest.raises(ConfigError, match=r"^model: names a model beside `models`"):
        AppConfig.from_dict({"model": "/m", "models": [{"name": "a"}]})


def test_the_old_model_section_is_one_model_named_after_its_files():
    assert [m.name for m in AppConfig.from_dict(copy.deepcopy(DEFAULT_CONFIG)).served] == ["shapes-dalle"]
    assert [m.name for m in AppConfig.from_dict({"model": "/models/dalle.pt"}).served] == ["dalle"]
    assert [m.name for m in AppConfig.from_dict({"model_dir": "/models/mini/"}).served] == ["mini"]


def test_serve_takes_named_models_and_refuses_a_repeated_plain_one():
    config = load_config(None, None, None, None, models=["mini=/models/mini", "shapes="], model={"dtype": "float32"})
    assert [(m.name, m.path, m.dtype) for m in config.served] == [("mini", "/models/mini", "float32"),
                                                                  ("shapes", None, "float32")]
    assert [m.name for m in load_config(None, None, None, None, models=["/models/a=b"]).served] == ["a-b"]
    with pytest.raises(ConfigError, match=r"--model: is given 2 times as a plain PATH; .*--model NAME=PATH"):
        load_config(None, None, None, None, models=["/models/a", "/models/b"])
    with pytest.raises(ConfigError, match=r"--model: '/models/b' has no name beside named models"):
        load_config(None, None, None, None, models=["a=/models/a", "/models/b"])
    with pytest.raises(ConfigError, match=r"--bpe-path: belongs to one model and several are served"):
        load_config(None, None, None, None, models=["a=/a.pt", "b=/b.pt"], model={"bpe_path": "/bpe.txt"})


def test_the_command_line_refuses_a_repeated_plain_model_with_exit_2(capsys):
    from tessera.server.main import main
    assert main(["--model", "/models/a", "--model", "/models/b"]) == 2
    assert "--model: is given 2 times" in capsys.readouterr().err


def _rss() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


async def test_a_model_that_does_not_fit_is_refused_at_load_saying_what_fits(tiny_model_dir, alone, tmp_path,
                                                                              monkeypatch):
    async with serve(two_models(tiny_model_dir, tmp_path), TOKEN) as s:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.server.http_port}", timeout=120,
                                     headers={"authorization": f"Bearer {TOKEN}"}) as http:
            # Its cache: 2 x 65536 rows of the bundled model, far past this machine's memory.
            entry = AppConfig.from_dict({"models": [{"name": "tiny", "ops": {"sample": {"batch_size": 65536}}}]})
            with pytest.raises(Exception) as info:
                await s.server.models.load(entry.served[0])
            assert type(info.value).__name__ == "ModelTooLarge"
            assert re.search(r"set graph\.ops\.sample\.batch_size to at most \d+", str(info.value))
            # Its weights: more than the memory left (as the platform reports it).
            from tessera.server.engine.platforms.cpu import CpuCompute
            monkeypatch.setattr(CpuCompute, "free_memory", lambda self: 1024)
            reply = await http.post("/v1/models/more:load", json={"path": str(tiny_model_dir)})
            assert reply.status_code == 429, reply.text
            assert re.search(r"a model of at most 0\.00 GiB fits", reply.json()["message"])
        assert [(m.name, m.version) for m in s.server.models] == [("tiny", "1"), ("shapes", "1")]
        assert await s.pngs("tiny", 7) == alone["tiny"][0]


def test_the_operations_guides_models_example_is_a_valid_configuration():
    import yaml
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    section = text.split("## Several models in one server", 1)[1]
    [example] = re.findall(r"```yaml\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    config = AppConfig.from_dict(yaml.safe_load(example))
    assert [(m.name, m.path) for m in config.served] == [
        ("mini", "/models/mini"), ("dalle", "/models/dalle.pt"), ("shapes", None)]
    assert config.graphs[0].ops["sample"].batch_size == 32
