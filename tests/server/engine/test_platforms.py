"""Platforms: the engine knows devices only through them; each picks its device's shape."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from tessera.server.engine import Engine, GraphConfig
from tessera.server.engine.platforms.cpu import CpuPlan
from tests.server.engine import toy_ops
from tests.server.engine.helpers import T, running


def stepper(devices: list[str], concurrency: int = 2, turns: bool = True) -> GraphConfig:
    return GraphConfig.from_dict({"output": "count", "device_turns": turns, "ops": {
        "count": {"type": T + "Counter", "inputs": ["request"], "batch_size": 4,
                  "concurrency": concurrency, "devices": devices}}})


async def test_on_a_gpu_a_stepping_op_runs_one_worker_per_gpu_and_says_so_once(caplog):
    caplog.set_level(logging.INFO, "tessera.engine")
    async with running(stepper(["cuda:0"], concurrency=3)) as engine:
        workers = engine.stages["count"].workers
        assert [(w.index, w.device) for w in workers] == [(0, "cuda:0")]
        assert workers[0].spec.compute is None  # no thread policy, no turns on a GPU
        assert [(await engine.submit(n).result()).value["finished_at"] > 0 for n in (2, 3)] == [True, True]
    told = [r for r in caplog.records if "one stepping worker per GPU" in r.getMessage()]
    assert len(told) == 1 and told[0].levelno == logging.INFO


async def test_stepping_workers_on_different_gpus_all_run():
    async with running(stepper(["cuda:0", "cuda:1"], concurrency=2)) as engine:
        assert [w.device for w in engine.stages["count"].workers] == ["cuda:0", "cuda:1"]


async def test_on_the_cpu_the_second_stepping_worker_steps_beside_the_turn():
    """The CPU platform's shape, unchanged: the first worker takes the device's turn with
    every core; the second computes on a thread of its own, one core, outside the node turn."""
    async with running(stepper(["cpu"], concurrency=2)) as engine:
        first, second = engine.stages["count"].workers
        assert first.shared is engine.platforms.device_thread("cpu") and second.shared is None
        assert first.spec.compute == CpuPlan("auto", turns=False, team=True)
        assert second.spec.compute == CpuPlan("auto", turns=False, team=False)


async def test_on_the_cpu_a_stepping_op_whose_step_reads_its_weights_runs_one_worker(monkeypatch):
    """A stepping OP that says a second worker beside the turn does not pay for its settings
    (SteppingOp.steps_beside: the sampler of a model with large weights) gets one worker on a
    CPU, holding one cache; one that says it pays gets both."""
    from tests.server.engine.toy_ops import Counter

    monkeypatch.setattr(Counter, "steps_beside", classmethod(lambda cls, settings: False))
    async with running(stepper(["cpu"], concurrency=2)) as engine:
        assert [w.index for w in engine.stages["count"].workers] == [0]
        assert (await engine.submit(3).result()).value["finished_at"] > 0
    monkeypatch.setattr(Counter, "steps_beside", classmethod(lambda cls, settings: True))
    async with running(stepper(["cpu"], concurrency=2)) as engine:
        assert [w.index for w in engine.stages["count"].workers] == [0, 1]


def test_the_sampler_steps_beside_for_small_weights_and_not_for_dall_e_minis(tmp_path):
    """The sampler's rule reads the weight files' size: the bundled model's and a DALLE-pytorch
    checkpoint's small files take two workers; min-dalle's halves past 1 GiB one."""
    from tessera.ops.sample import WEIGHT_BOUND_FILE_BYTES, SampleOp

    assert SampleOp.steps_beside({}) and SampleOp.steps_beside({"model": {"path": None}})
    ckpt = tmp_path / "dalle.pt"
    ckpt.write_bytes(b"0" * 1024)
    assert SampleOp.steps_beside({"model": {"path": str(ckpt)}})
    mini = tmp_path / "md" / "dalle_bart_mini"
    mini.mkdir(parents=True)
    for name in ("encoder.pt", "decoder.pt"):
        with open(mini / name, "wb") as f:
            f.truncate(WEIGHT_BOUND_FILE_BYTES // 2 + 1)  # sparse: no disk used
    assert not SampleOp.steps_beside({"model": {"path": str(tmp_path / "md")}})
    assert SampleOp.steps_beside({"model": {"path": str(tmp_path / "missing")}})  # refused later, with the reason


async def test_a_start_that_fails_stops_without_a_shutdown_grace_warning(monkeypatch, caplog):
    def broken(self, device):
        raise RuntimeError("no weights")

    monkeypatch.setattr(toy_ops.Echo, "setup", broken)
    engine = Engine(GraphConfig.from_dict({"output": "e", "ops": {"e": {"type": T + "Echo", "inputs": ["request"]}}}))
    with pytest.raises(RuntimeError, match="no weights"):
        await engine.start()
    with caplog.at_level(logging.WARNING, "tessera.engine"):
        await engine.stop(0)
    assert not [r for r in caplog.records if "shutdown grace" in r.getMessage()]


def test_the_engine_core_imports_no_torch():
    code = ("import sys; import tessera.server.engine.engine, tessera.server.engine.stepping, "
            "tessera.server.engine.platforms.cpu, tessera.server.engine.platforms.cuda; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_serve_device_puts_every_model_op_on_it():
    from tessera.server.main import load_config

    config = load_config(None, None, None, None, device="cuda:0")
    devices = {name: op.devices for name, op in config.graph.ops.items()}
    assert devices.pop("tokenize") == ["cpu"]  # a tokenizer computes on no device
    assert devices and all(d == ["cuda:0"] for d in devices.values())
    on_cpu = load_config(None, None, None, None, device="cpu")
    assert all(op.devices == ["cpu"] for op in on_cpu.graph.ops.values())


def test_serve_refuses_an_unknown_device_in_one_line(capsys):
    from tessera.server.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["--device", "tpu"])
    assert exit_.value.code == 2 and "unknown device 'tpu'" in capsys.readouterr().err


def test_each_platform_says_how_an_op_computes_on_its_device():
    """Precision and model calls are the platform's: a GPU computes "auto" in float16 and
    captures "auto" calls as CUDA graphs; a CPU runs them eagerly; any device takes a named
    precision."""
    import torch

    from tessera.server.engine.platforms import compute_for
    from tessera.server.engine.platforms.cpu import CpuCompute
    from tessera.server.engine.platforms.cuda import CudaCompute

    cpu, gpu = compute_for("cpu"), compute_for("cuda:1")
    assert type(cpu) is CpuCompute and type(gpu) is CudaCompute and gpu.device == "cuda:1"
    named = ("float32", "bfloat16", "float16")
    for compute in (cpu, gpu):
        assert [compute.dtype(d, "min-dalle") for d in named] == [torch.float32, torch.bfloat16, torch.float16]
    assert [gpu.dtype("auto", f) for f in ("tessera", "dalle-pytorch", "min-dalle")] == [torch.float16] * 3
    assert compute_for("meta").dtype("auto", "min-dalle") == torch.float32  # built only to describe
    assert (cpu.call_mode("auto"), gpu.call_mode("auto"), cpu.call_mode("padded")) == ("off", "cuda_graph", "padded")
    for compute in (cpu, gpu):
        with pytest.raises(ValueError, match="dtype must be one of auto, float32, bfloat16, float16; got 'fp8'"):
            compute.dtype("fp8")
    assert cpu.free_memory() > 0 and compute_for("meta").free_memory() is None


@pytest.mark.parametrize("flags, tessera, large", [
    ({"avx2", "avx512f", "avx512_bf16"}, "float32", "bfloat16"),   # AVX-512 BF16 (this machine's Zen)
    ({"avx2", "amx_tile", "amx_bf16"}, "float32", "bfloat16"),     # AMX (Sapphire Rapids)
    ({"avx2", "avx512f"}, "float32", "float32"),                   # no bf16 matmuls
    (set(), "float32", "float32"),                                 # flags unknown
])
def test_a_cpu_chooses_bfloat16_only_where_it_computes_it_and_it_measured_faster(monkeypatch, flags, tessera, large):
    import torch

    from tessera.server.engine.platforms import compute_for, precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    cpu = compute_for("cpu")
    assert str(cpu.dtype("auto", "tessera")).removeprefix("torch.") == tessera  # the bundled model: dispatch-bound
    for family in ("dalle-pytorch", "min-dalle"):
        assert str(cpu.dtype("auto", family)).removeprefix("torch.") == large
    assert cpu.dtype("float32", "min-dalle") == torch.float32  # a named precision is always honoured


def test_a_bfloat16_model_on_a_cpu_computes_a_row_the_same_whatever_its_batch():
    """oneDNN's one-row bf16 path sums in another order than its batched one (K >= 2048): the
    CPU platform's prepared linear layers give a row the bytes it gets in any batch."""
    import torch

    from tessera.server.engine.platforms import compute_for
    from tessera.server.engine.platforms.precision import RowInvariantLinear

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2048, 2048, bias=False), torch.nn.Linear(2048, 512)).to(torch.bfloat16)
    x = torch.randn(9, 1, 2048).to(torch.bfloat16)
    with torch.inference_mode():
        before = model(x[:1])
        compute_for("cpu").prepare(model, torch.bfloat16)
        assert all(type(m) is RowInvariantLinear for m in model)
        assert set(model.state_dict()) == {"0.weight", "1.weight", "1.bias"}  # the same parameters
        # (unprepared, rows 4, 6 and 8 alone differ from the same rows in the batch: checked)
        batched = model(x)
        assert all(torch.equal(model(x[i:i + 1]), batched[i:i + 1]) for i in range(9))
        assert model(x[:1]).shape == before.shape


def test_a_gpu_captures_cuda_graphs_and_a_cpu_refuses_them(monkeypatch):
    import torch

    from tessera.server.engine.platforms import compute_for
    from tessera.server.engine.platforms import cuda_graphs
    from tessera.server.engine.platforms.buckets import Bucketed

    class Captured(Bucketed):  # what the GPU's platform builds, without a GPU to capture on
        modes = ("cuda_graph",)

    monkeypatch.setattr(cuda_graphs, "CudaGraphs", Captured)
    rows = [torch.zeros(1, 2)]
    made = compute_for("cuda:0").bucketed(torch.neg, rows, [2], "cuda_graph")
    assert type(made) is Captured and made(torch.ones(1, 2)).tolist() == [[-1.0, -1.0]]
    assert type(compute_for("cuda:0").bucketed(torch.neg, rows, [2], "padded")) is Bucketed
    with pytest.raises(ValueError, match="'cuda_graph' does not run on cpu"):
        compute_for("cpu").bucketed(torch.neg, rows, [2], "cuda_graph")
