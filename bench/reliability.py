"""`tessera reliability`: the front door tried from outside, as a reliability engineer would.

Each check starts its own `tessera serve` child on loopback (free ports), drives it with
clients built from the protos, and asserts counts, never timings:

- soak: calls at a concurrency with cancellations, short deadlines and invalid input;
  every call answered, no UNKNOWN or INTERNAL, every call counted once in
  tessera_requests_total, in-flight back to 0, no traceback or leaked task in the log;
  run twice, the server's RSS may grow by at most --rss-growth between the two.
- burst: more calls at once than max_inflight: each one served or refused at once.
- sigterm: SIGTERM under load: every call served or UNAVAILABLE, the process exits 0.
- fuzz: hypothesis-made bodies (random and mutated bytes) and fields; only OK or
  INVALID_ARGUMENT, and no traceback.
- auth: token variants (none, wrong, two headers, lower-case scheme, garbage body).

With --models N every server serves the model N times under the names m0, m1, ... (a
`models:` configuration, one engine each): the soak's calls name one at random (or none, the
first) and a few name a model that is not served (NOT_FOUND, counted as not_found), and every
check holds as with one.

    tessera reliability --calls 1500 --concurrency 48 --fuzz 1500 --out runs/reliability.json
    tessera reliability --models 2 --calls 1500 --out runs/reliability-2-models.json

Exit status 0 when every check held, 1 otherwise; the JSON holds every count.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.bench.servers import stop_server
from tessera.v1 import image_generation_pb2 as pb

GENERATE = "/tessera.v1.ImageGeneration/Generate"
STREAM = "/tessera.v1.ImageGeneration/GenerateStream"
BAD_CODES = {"UNKNOWN", "INTERNAL"}
# What the server's log must never hold for client input.
BAD_LOG = re.compile(r"Traceback|Task was destroyed|never retrieved|ExecuteBatchError|Unexpected error")
PROMPTS = ["a red circle", "a small blue square at the top", "a large green diamond on a white background",
           "蓝色背景上左上角有一个小的红色圆形", "a yellow triangle in the center", "a photo of a cat"]
INVALID = [{"prompt": ""}, {"prompt": "a red circle", "num_images": 99}, {"prompt": "a red circle", "top_p": 2.0},
           {"prompt": "a red circle", "request_id": "x" * 100_000}, {"prompt": "red " * 60},
           b"\x0a\x02\xff\xfe", b"\x0a\xff\xff\xff\x0f", b"\x0b" * 3000]


@dataclass
class Check:
    name: str
    calls: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    counted: dict[str, float] = field(default_factory=dict)  # tessera_requests_total deltas
    problems: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def expect(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)


class Server:
    """`tessera serve` in a child process on free ports; its log goes to a file we read."""

    def __init__(self, config: dict, env: dict | None = None):
        self.config, self.env = config, env
        self.proc: subprocess.Popen | None = None
        # The names a request may give: the models served, "" (the first); [""] for one model.
        self.names = [m["name"] for m in config.get("models") or []] + [""] if config.get("models") else [""]

    def __enter__(self) -> Server:
        self._dir = tempfile.TemporaryDirectory(prefix="tessera-reliability-")
        path = Path(self._dir.name) / "config.yaml"
        path.write_text(yaml.safe_dump(self.config))
        self.log_path = Path(self._dir.name) / "server.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tessera.server.cli", "serve", "--config", str(path), "--port", "0",
             "--metrics-port", "0", "--http-port", "-1", "--log-level", "WARNING"],  # no fixed port: 8080 may be taken
            stdout=subprocess.PIPE, stderr=self._log, text=True, env={**os.environ, **(self.env or {})})
        line = self.proc.stdout.readline()
        match = re.search(r":(\d+); metrics on http://[^:]+:(\d+)", line)
        if not match:
            self.proc.wait(timeout=60)
            log = self.log()[-2000:]
            self.__exit__()
            raise RuntimeError(f"the server did not start: {line.strip()} {log}")
        self.port, self.metrics_port = int(match.group(1)), int(match.group(2))
        return self

    def __exit__(self, *exc) -> None:
        stop_server(self.proc)
        self._log.close()
        self._dir.cleanup()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def bad_log_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if BAD_LOG.search(line)]

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    def _samples(self):
        from prometheus_client.parser import text_string_to_metric_families
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        for fam in text_string_to_metric_families(body):
            yield from fam.samples

    def metrics(self) -> dict[tuple[str, str], float]:
        """{(sample name, outcome label or ''): value} from the Prometheus endpoint, summed over
        the other labels (a server of several models has one series per model)."""
        out: dict[tuple[str, str], float] = {}
        for s in self._samples():
            key = (s.name, s.labels.get("outcome", ""))
            out[key] = out.get(key, 0.0) + s.value
        return out

    def served_by_model(self) -> dict[str, float]:
        """Requests each model's engine served (tessera_engine_requests_total{outcome="ok"} by model)."""
        return {s.labels["model"]: s.value for s in self._samples()
                if s.name == "tessera_engine_requests_total" and s.labels.get("outcome") == "ok" and "model" in s.labels}

    def requests_total(self) -> dict[str, float]:
        return {k[1]: v for k, v in self.metrics().items() if k[0] == "tessera_requests_total"}

    def counted_since(self, before: dict[str, float], calls: int, checks: int = 50) -> dict[str, float]:
        """tessera_requests_total's growth since `before`, once it reaches `calls` or after
        `checks` looks. A call is counted as its handler ends, and gRPC may send a refused
        call's status to the caller a moment before that: the count can trail the answers."""
        counted: dict[str, float] = {}
        for _ in range(checks):
            counted = _delta(self.requests_total(), before)
            if sum(counted.values()) >= calls:
                break
            time.sleep(0.1)  # polling a live server from outside: there is no event to wait on
        return counted

    def inflight_settles(self, checks: int = 50) -> float:
        """tessera_inflight_requests once it reaches 0 (a cancelled call's clean-up may trail
        its answer by a turn of the server's loop), or its last value."""
        value = -1.0
        for _ in range(checks):
            value = self.metrics()[("tessera_inflight_requests", "")]
            if value == 0:
                break
            time.sleep(0.1)  # polling a live server from outside: there is no event to wait on
        return value


def config_for(model_dir: str | None, models: int = 1, **graph) -> dict:
    """The shipped configuration on `model_dir` (None: the bundled model); `models` > 1: that
    model served under the names m0, m1, ... (`models:`, an engine each)."""
    from tessera.server.defaults import DEFAULT_CONFIG
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    if models > 1:
        cfg.pop("model", None)
        cfg["models"] = [{"name": f"m{i}", "path": model_dir} for i in range(models)]
    else:
        cfg["model_dir"] = model_dir
    cfg["graph"].update(graph)
    return cfg


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


# -- one call of each kind, answering its status code's name ---------------------------------------

def _body(spec) -> bytes:
    return spec if isinstance(spec, bytes) else pb.GenerateRequest(**spec).SerializeToString()


async def _unary(channel, body: bytes, timeout: float | None = 60, metadata=()) -> str:
    try:
        await channel.unary_unary(GENERATE)(body, timeout=timeout, metadata=metadata)
        return "OK"
    except grpc.aio.AioRpcError as exc:
        return exc.code().name


async def _stream(channel, body: bytes, *, cancel_after_first: bool = False, timeout: float | None = 60) -> str:
    call = channel.unary_stream(STREAM)(body, timeout=timeout)
    try:
        async for _ in call:
            if cancel_after_first:
                call.cancel()
                return "CANCELLED"
        return "OK"
    except grpc.aio.AioRpcError as exc:
        return exc.code().name


# -- the checks ------------------------------------------------------------------------------------

async def soak(server: Server, calls: int, concurrency: int, seed: int, *, cancel: float = 0.10,
               short_deadline: float = 0.10, invalid: float = 0.05, unknown: float = 0.03) -> Check:
    check = Check("soak", calls)
    rng = random.Random(seed)
    before = server.requests_total()
    plan = []
    several = len(server.names) > 1
    unknown = unknown if several else 0.0
    for i in range(calls):
        r = rng.random()
        params = {"prompt": rng.choice(PROMPTS), "num_candidates": rng.choice([1, 2, 4]), "seed": i + 1,
                  "request_id": f"soak-{seed}-{i}", "model": rng.choice(server.names)}
        if r < invalid:
            plan.append(("invalid", _body(rng.choice(INVALID))))
        elif r < invalid + unknown:
            plan.append(("unknown", _body({**params, "model": "not-served"})))
        elif r < invalid + unknown + cancel:
            plan.append(("cancel", _body({**params, "preview_every": 16})))
        elif r < invalid + unknown + cancel + short_deadline:
            plan.append(("deadline", _body(params), rng.uniform(0.2, 0.8)))
        else:
            plan.append(("stream" if rng.random() < 0.5 else "unary", _body(params)))
    codes = collections.Counter()
    by_kind = collections.defaultdict(collections.Counter)
    queue = collections.deque(plan)
    async with grpc.aio.insecure_channel(server.target, options=[("grpc.enable_retries", 0)]) as channel:
        async def worker():
            while queue:
                kind, body, *rest = queue.popleft()
                if kind in ("invalid", "unknown", "unary"):
                    code = await _unary(channel, body)
                elif kind == "deadline":
                    code = await _unary(channel, body, timeout=rest[0])
                else:
                    code = await _stream(channel, body, cancel_after_first=kind == "cancel")
                codes[code] += 1
                by_kind[kind][code] += 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    check.codes = dict(codes)
    check.facts["by_kind"] = {k: dict(v) for k, v in by_kind.items()}
    check.facts["inflight_after"] = server.inflight_settles()
    check.counted = server.counted_since(before, calls)
    check.expect(sum(codes.values()) == calls, f"{calls - sum(codes.values())} calls got no answer")
    check.expect(not BAD_CODES & set(codes), f"UNKNOWN/INTERNAL answered: {dict(codes)}")
    check.expect(set(by_kind["invalid"]) <= {"INVALID_ARGUMENT"}, f"invalid input got {dict(by_kind['invalid'])}")
    check.expect(set(by_kind["unknown"]) <= {"NOT_FOUND"}, f"an unknown model got {dict(by_kind['unknown'])}")
    check.expect(check.counted.get("not_found", 0) == by_kind["unknown"]["NOT_FOUND"],
                 f"not_found counted {check.counted.get('not_found', 0):.0f}, "
                 f"clients saw {by_kind['unknown']['NOT_FOUND']}")
    if several:  # each model served some of the calls
        check.facts["by_model"] = served = server.served_by_model()
        check.expect(all(served.get(name, 0) > 0 for name in server.names if name),
                     f"some model served nothing: {check.facts['by_model']}")
    check.expect(sum(check.counted.values()) == calls,
                 f"tessera_requests_total counted {sum(check.counted.values()):.0f} of {calls} calls")
    check.expect(check.counted.get("invalid_input", 0) == by_kind["invalid"]["INVALID_ARGUMENT"],
                 f"invalid_input counted {check.counted.get('invalid_input', 0):.0f}, "
                 f"clients saw {by_kind['invalid']['INVALID_ARGUMENT']}")
    check.expect(check.facts["inflight_after"] == 0, f"in-flight stayed at {check.facts['inflight_after']}")
    return check


async def burst(server: Server, calls: int) -> Check:
    """`calls` requests at once against a server whose max_inflight is far below that."""
    check = Check("burst", calls)
    before = server.requests_total()
    async with grpc.aio.insecure_channel(server.target, options=[("grpc.enable_retries", 0)]) as channel:
        results = await asyncio.gather(*(_unary(channel, _body({"prompt": "a red circle", "seed": i + 1}))
                                         for i in range(calls)))
    check.codes = dict(collections.Counter(results))
    check.counted = server.counted_since(before, calls)
    check.facts["inflight_after"] = server.inflight_settles()
    check.expect(set(check.codes) <= {"OK", "RESOURCE_EXHAUSTED"}, f"burst answered {check.codes}")
    check.expect(check.codes.get("RESOURCE_EXHAUSTED", 0) > 0, "no call was refused: the burst did not overload")
    check.expect(check.counted.get("overloaded", 0) == check.codes.get("RESOURCE_EXHAUSTED", 0),
                 f"overloaded counted {check.counted.get('overloaded', 0):.0f}, "
                 f"clients saw {check.codes.get('RESOURCE_EXHAUSTED', 0)}")
    check.expect(check.facts["inflight_after"] == 0, f"in-flight stayed at {check.facts['inflight_after']}")
    return check


async def sigterm_under_load(server: Server, concurrency: int, after_ok: int) -> Check:
    """Load at `concurrency`; SIGTERM once `after_ok` calls succeeded; calls go on until refused.

    A call sent before the signal must be served or told UNAVAILABLE (drained, or refused
    while draining). One sent after it may also meet gRPC closing its listener: a call that
    races the close is reset (CANCELLED) before any handler sees it; counted apart."""
    check = Check("sigterm")
    before, after = collections.Counter(), collections.Counter()
    signalled = asyncio.Event()
    async with grpc.aio.insecure_channel(server.target) as channel:  # gRPC's default (transparent) retries
        async def worker(w: int):
            i = 0
            while True:
                sent_after = signalled.is_set()
                code = await _unary(channel, _body({"prompt": "a red circle", "seed": 1000 * w + i + 1}), timeout=60)
                i += 1
                (after if sent_after else before)[code] += 1
                if before["OK"] >= after_ok and not signalled.is_set():
                    signalled.set()
                    server.proc.send_signal(signal.SIGTERM)
                if code != "OK" and signalled.is_set():
                    return  # the server is going away: this worker stops
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    check.calls = sum(before.values()) + sum(after.values())
    check.codes = {f"sent before SIGTERM {k}": v for k, v in before.items()}
    check.codes.update({f"sent after SIGTERM {k}": v for k, v in after.items()})
    check.facts["exit_code"] = await asyncio.to_thread(server.proc.wait, 60)
    check.expect(set(before) <= {"OK", "UNAVAILABLE"}, f"calls sent before SIGTERM got {dict(before)}")
    check.expect(set(after) <= {"OK", "UNAVAILABLE", "CANCELLED"}, f"calls sent after SIGTERM got {dict(after)}")
    check.expect(check.facts["exit_code"] == 0, f"the server exited {check.facts['exit_code']}")
    return check


def fuzz(server: Server, examples: int) -> Check:
    """hypothesis draws bodies: raw bytes, valid requests mutated, and out-of-range fields
    (derandomized: the same examples on every run, so a failure reproduces)."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    check = Check("fuzz")
    codes = collections.Counter()
    before = server.requests_total()
    u32, u64 = st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
    fields = st.fixed_dictionaries({}, optional={
        "prompt": st.one_of(st.text(max_size=80), st.sampled_from(PROMPTS)),
        "num_images": st.one_of(st.integers(0, 20), u32), "num_candidates": st.one_of(st.integers(0, 70), u32),
        "seed": u64, "temperature": st.floats(width=32), "top_k": u32, "top_p": st.floats(width=32),
        "guidance_scale": st.floats(width=32), "request_id": st.text(max_size=200),
        "preview_every": st.integers(0, 300), "priority": st.integers(-20, 20),  # the range: [-10, 10]
        "model": st.sampled_from(server.names)})
    small = fields.map(lambda f: {**f, "num_candidates": min(f.get("num_candidates", 0), 4),
                                  "num_images": min(f.get("num_images", 0), 4)})

    def mutate(body: bytes, edits: list[tuple[int, int]]) -> bytes:
        data = bytearray(body)
        for at, value in edits:
            if not data:
                break
            at %= len(data)
            if value < 256:
                data[at] = value
            elif value < 512:
                del data[at:]
            else:
                data.insert(at, value % 256)
        return bytes(data)

    bodies = st.one_of(
        st.binary(max_size=600),
        st.builds(lambda f, edits: mutate(pb.GenerateRequest(**f).SerializeToString(), edits),
                  small, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 767)), min_size=1, max_size=6)),
        small.map(lambda f: pb.GenerateRequest(**f).SerializeToString()))
    with grpc.insecure_channel(server.target, options=[("grpc.enable_retries", 0)]) as channel:
        generate = channel.unary_unary(GENERATE)

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(body=bodies)
        def one(body: bytes) -> None:
            try:
                generate(body, timeout=120)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                code = exc.code().name
                if code == "NOT_FOUND" and _names_a_model(body, server.names):
                    code = "NOT_FOUND for a served model"  # a flipped byte may rename it: only that is fine
                codes[code] += 1

        one()
    check.calls = sum(codes.values())
    check.codes = dict(codes)
    check.counted = server.counted_since(before, check.calls)
    check.expect(set(codes) <= {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}, f"fuzzed bodies got {dict(codes)}")
    check.expect(sum(check.counted.values()) == check.calls,
                 f"tessera_requests_total counted {sum(check.counted.values()):.0f} of {check.calls}")
    return check


def _names_a_model(body: bytes, names: list[str]) -> bool:
    """Whether `body` is a GenerateRequest naming a model the server serves ("" is its first)."""
    try:
        return pb.GenerateRequest.FromString(body).model in names
    except Exception:  # noqa: BLE001 - bytes that do not parse name no model
        return False


async def auth_variants(server: Server, token: str) -> Check:
    check = Check("auth")
    good = (("authorization", f"Bearer {token}"),)
    body = _body({"prompt": "a red circle", "seed": 1})
    cases = [
        ("no token", body, (), "UNAUTHENTICATED"),
        ("wrong token", body, (("authorization", "Bearer nope"),), "UNAUTHENTICATED"),
        ("lower-case scheme", body, (("authorization", f"bearer {token}"),), "UNAUTHENTICATED"),
        ("token without scheme", body, (("authorization", token),), "UNAUTHENTICATED"),
        ("wrong then right", body, (("authorization", "Bearer nope"), *good), "UNAUTHENTICATED"),
        ("right twice", body, good + good, "UNAUTHENTICATED"),
        ("garbage body, no token", b"\x0a\xff\xff\xff\x0f", (), "UNAUTHENTICATED"),
        ("garbage body, token", b"\x0a\xff\xff\xff\x0f", good, "INVALID_ARGUMENT"),
        ("right token", body, good, "OK"),
    ]
    before = server.requests_total()
    async with grpc.aio.insecure_channel(server.target, options=[("grpc.enable_retries", 0)]) as channel:
        for name, b, metadata, expected in cases:
            got = await _unary(channel, b, metadata=metadata)
            check.codes[name] = got
            check.expect(got == expected, f"{name}: {got}, expected {expected}")
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        check.codes["health, no token"] = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
        check.expect(health.status == health_pb2.HealthCheckResponse.SERVING, "health needed a token")
    check.calls = len(cases)
    check.counted = server.counted_since(before, check.calls)
    unauthenticated = sum(1 for *_, e in cases if e == "UNAUTHENTICATED")
    check.expect(check.counted.get("unauthenticated", 0) == unauthenticated,
                 f"unauthenticated counted {check.counted.get('unauthenticated', 0):.0f} of {unauthenticated}")
    return check


def _log_check(server: Server, check: Check) -> None:
    lines = server.bad_log_lines()
    check.facts["bad_log_lines"] = len(lines)
    check.expect(not lines, f"{len(lines)} bad log lines, first: {lines[:1]}")


# -- the whole suite -------------------------------------------------------------------------------

def run_suite(model_dir: str | None, *, calls: int, concurrency: int, fuzz_examples: int, burst_calls: int,
              rss_growth: float | None, seed: int = 0, models: int = 1, report=print) -> list[Check]:
    checks: list[Check] = []

    def done(check: Check) -> None:
        checks.append(check)
        report(f"{check.name}: {'ok' if check.ok else 'FAILED'} {check.calls} calls {check.codes} "
               f"counted {check.counted} {check.facts} {'; '.join(check.problems)}")

    with Server(config_for(model_dir, models)) as server:
        first = asyncio.run(soak(server, calls, concurrency, seed))
        rss_first = server.rss_kib()
        second = asyncio.run(soak(server, calls, concurrency, seed))
        rss_second = server.rss_kib()
        second.facts.update(rss_kib_after_first=rss_first, rss_kib_after_second=rss_second,
                            rss_growth=(rss_second - rss_first) / rss_first)
        if rss_growth is not None:
            second.expect(second.facts["rss_growth"] < rss_growth,
                          f"RSS grew {100 * second.facts['rss_growth']:.1f}% between two identical soaks "
                          f"(bound {100 * rss_growth:.0f}%)")
        fuzzed = fuzz(server, fuzz_examples)
        for check in (first, second, fuzzed):
            _log_check(server, check)
            done(check)
    with Server(config_for(model_dir, models, max_inflight=4)) as server:
        check = asyncio.run(burst(server, burst_calls))
        _log_check(server, check)
        done(check)
    with Server(config_for(model_dir, models, shutdown_grace_s=60.0)) as server:
        check = asyncio.run(sigterm_under_load(server, concurrency=min(concurrency, 16), after_ok=8))
        _log_check(server, check)
        done(check)
    cfg = config_for(model_dir, models)
    cfg["server"]["token_env"] = "TESSERA_RELIABILITY_TOKEN"
    with Server(cfg, env={"TESSERA_RELIABILITY_TOKEN": "s3cret"}) as server:
        check = asyncio.run(auth_variants(server, "s3cret"))
        _log_check(server, check)
        done(check)
    return checks


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model-dir", default=None, help="default: the bundled model")
    ap.add_argument("--calls", type=int, default=1500, help="calls per soak (two soaks)")
    ap.add_argument("--concurrency", type=int, default=48)
    ap.add_argument("--fuzz", type=int, default=1500, help="hypothesis examples")
    ap.add_argument("--burst", type=int, default=200, help="calls at once against max_inflight 4")
    ap.add_argument("--rss-growth", type=float, default=0.05, help="bound on RSS growth between the soaks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", type=int, default=1,
                    help="serve the model this many times, as m0, m1, ... (a models: configuration)")
    ap.add_argument("--out", help="write every count as JSON here")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    checks = run_suite(args.model_dir, calls=args.calls, concurrency=args.concurrency, fuzz_examples=args.fuzz,
                       burst_calls=args.burst, rss_growth=args.rss_growth, seed=args.seed,
                       models=args.models)
    failed = [c.name for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks held in {time.monotonic() - started:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        # What the command line said (not the dispatcher's own entries: the parser, the function).
        options = {k: v for k, v in vars(args).items() if k not in ("run", "prog", "parser")}
        Path(args.out).write_text(json.dumps({"args": options, "checks": [asdict(c) for c in checks]}, indent=1))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tessera reliability", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))
