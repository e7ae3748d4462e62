"""The bench's roofline: the machine's peak, a decode step's work counted from the model, and
the step's share of the peak (no timing is asserted: the figures are the bench's)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tessera.bench.roofline import Peak, StepCost, count_step, measure_peak, peak_line, roofline_line, share


def _peak(**flops) -> Peak:
    """A peak with made-up figures: 2 GB/s read, 1 GB/s copy."""
    return Peak("cpu", flops, {}, read_bytes_per_s=2e9, copy_bytes_per_s=1e9, buffer_bytes=1, seconds=0.0)


class TinyStep(nn.Module):
    """One attention layer and a head: q/k/v from one Linear, attention over a cache of T positions
    (by matmuls, as ops/families/base.py's attend, or by scaled_dot_product_attention with a mask)."""
    H, D, T, V = 2, 4, 6, 5

    def __init__(self):
        super().__init__()
        E = self.H * self.D
        self.qkv = nn.Linear(E, 3 * E)
        self.out = nn.Linear(E, E, bias=False)
        self.head = nn.Linear(E, self.V)

    def decode_step(self, x, k, v, visible, sdpa=False):
        n = x.shape[0]
        q = self.qkv(x)[:, :self.H * self.D].view(n, self.H, 1, self.D)
        if sdpa:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        else:
            scores = (q @ k.transpose(-1, -2)).masked_fill(~visible, float("-inf"))
            y = torch.matmul(scores.softmax(-1), v)
        return self.head(self.out(y.reshape(n, -1)))


def _tiny_inputs(rows: int, live: list[int]):
    m = TinyStep()
    x = torch.randn(rows, m.H * m.D)
    k, v = torch.randn(rows, m.H, m.T, m.D), torch.randn(rows, m.H, m.T, m.D)
    visible = (torch.arange(m.T)[None, :] < torch.tensor(live)[:, None])[:, None, None, :]
    return m, x, k, v, visible


def test_the_probes_measure_positive_rates_and_say_what_threads_they_ran_on(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # recorded as set, whatever OpenMP made of it
    peak = measure_peak("cpu", seconds=0.01, size=128, megabytes=2)
    assert {"float32", "bfloat16"} <= peak.matmul_flops_per_s.keys()  # every CPU build runs these
    assert all(f > 0 for f in peak.matmul_flops_per_s.values())
    assert peak.read_bytes_per_s > 0 and peak.copy_bytes_per_s > 0 and peak.buffer_bytes == 2 * 2 ** 20
    assert peak.bytes_per_s == max(peak.read_bytes_per_s, peak.copy_bytes_per_s)
    assert peak.threads["torch_threads"] == torch.get_num_threads()
    assert peak.threads["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    line = peak_line(peak)
    assert "float32" in line and "FLOP/s" in line and "B/s" in line
    assert f"torch threads {torch.get_num_threads()}" in line and "OMP_WAIT_POLICY=PASSIVE" in line
    assert json.loads(json.dumps(peak.to_dict()))["bytes_per_s"] == peak.bytes_per_s  # bench.json takes it


def test_a_precision_the_device_cannot_multiply_in_has_no_peak_and_its_step_no_compute_share(monkeypatch):
    mm = torch.mm

    def no_half(a, b, **kw):
        if a.dtype == torch.float16:
            raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'')
        return mm(a, b, **kw)
    monkeypatch.setattr(torch, "mm", no_half)
    peak = measure_peak("cpu", seconds=0.01, size=64, megabytes=1)
    assert "float16" not in peak.matmul_flops_per_s and "float32" in peak.matmul_flops_per_s
    r = share(StepCost(4, {"float16": 1e6}, {}, {"float16": 1e6}), 1e-3, peak)
    assert r["flop_share"] is None and r["missing_peaks"] == ["float16"] and r["bound"] == "memory"
    assert "no float16 matmul peak" in roofline_line("step", r)


@pytest.mark.parametrize("sdpa", [False, True], ids=["matmul attention", "masked sdpa"])
def test_a_steps_work_is_counted_from_the_modules_it_calls(sdpa):
    rows, live = 3, [2, 4, 6]
    m, x, k, v, visible = _tiny_inputs(rows, live)
    cost = count_step(lambda: m.decode_step(x, k, v, visible, sdpa=sdpa), rows)
    E, H, D, T = m.H * m.D, m.H, m.D, m.T
    params = E * 3 * E + E * E + E * m.V                      # the three Linears' weights
    assert cost.linear_flops == {"float32": 2 * rows * params}
    assert cost.weight_bytes == {"float32": 4 * (params + 3 * E + m.V)}  # weights and biases, once each
    # matmul attention computes every position it is handed; sdpa's count keeps the mask's only
    pairs = H * sum(live) if sdpa else rows * H * T
    assert cost.attention_flops == {"float32": 4 * D * pairs}
    assert cost.cache_bytes == 2 * pairs * D * 4              # keys and values read
    assert cost.total_flops == 2 * rows * params + 4 * D * pairs


def test_the_bundled_models_step_counts_its_weights_in_their_own_precision():
    from tessera.bench.roofline import live_prefix
    from tessera.ops.families.tessera.transformer import ImageGPT, TransformerConfig
    cfg = TransformerConfig(text_vocab=50, text_len=4, image_vocab=40, image_len=9, d_model=16, n_layer=2, n_head=2)
    linears = [mod for mod in ImageGPT(cfg).modules() if isinstance(mod, nn.Linear)]
    weights = sum(mod.weight.numel() for mod in linears)
    biases = sum(mod.bias.numel() for mod in linears if mod.bias is not None)
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2)):
        model = ImageGPT(cfg).eval().to(dtype)
        cache = model.new_cache(2, "cpu", dtype)
        cost = count_step(lambda: model.decode_step(torch.zeros(2, dtype=torch.long), torch.tensor([0, 3]), cache,
                                                    **live_prefix(model, 3)), rows=2)
        name = str(dtype).removeprefix("torch.")
        assert cost.linear_flops == {name: 2 * 2 * weights}    # every Linear once a step, both rows
        assert cost.weight_bytes == {name: size * (weights + biases)}
        assert cost.attention_flops.keys() == {name} and cost.cache_bytes > 0


def test_the_share_of_the_peak_is_the_steps_rate_over_it():
    rows = 3
    m, x, k, v, visible = _tiny_inputs(rows, [2, 4, 6])
    cost = count_step(lambda: m.decode_step(x, k, v, visible), rows)
    step_s, peak = 2e-3, _peak(float32=1e9)
    r = share(cost, step_s, peak)
    assert r["flops_per_s"] == pytest.approx(cost.total_flops / step_s)
    assert r["flop_share"] == pytest.approx(cost.total_flops / step_s / 1e9)
    assert r["weight_bytes_per_s"] == pytest.approx(cost.total_weight_bytes / step_s)
    assert r["weight_byte_share"] == pytest.approx(cost.total_weight_bytes / step_s / 2e9)  # the faster probe
    compute_s, memory_s = cost.total_flops / 1e9, (cost.total_weight_bytes + cost.cache_bytes) / 2e9
    assert r["bound"] == ("compute" if compute_s > memory_s else "memory")
    assert r["roofline_share"] == pytest.approx(max(compute_s, memory_s) / step_s)
    line = roofline_line("decode step", r)
    assert f"{r['flop_share']:.1%} of the matmul peak" in line
    assert f"{r['weight_byte_share']:.1%} of the memory peak" in line
    assert f"{r['roofline_share']:.1%} of the roofline" in line


def test_mixed_precisions_take_each_ones_own_peak():
    cost = StepCost(8, linear_flops={"bfloat16": 4e9}, attention_flops={"float32": 1e9},
                    weight_bytes={"bfloat16": 1e3})
    r = share(cost, 1.0, _peak(float32=1e9, bfloat16=4e9))
    assert r["flop_share"] == pytest.approx(4e9 / 4e9 + 1e9 / 1e9)   # one second at each peak
    assert r["bound"] == "compute" and r["precisions"] == ["bfloat16"]
    mean = StepCost.mean([StepCost(8, {"float32": 1.0}, {"float32": 2.0}, {"float32": 8.0}, 4.0),
                          StepCost(8, {"float32": 1.0}, {"float32": 6.0}, {"float32": 8.0}, 12.0)])
    assert (mean.attention_flops, mean.weight_bytes, mean.cache_bytes) == ({"float32": 4.0}, {"float32": 8.0}, 8.0)


def test_the_families_report_states_the_peak_and_the_step_against_it():
    from tessera.bench.families import _roofline, roofline_part
    from tessera.ops.families.tessera.transformer import ImageGPT, TransformerConfig
    cfg = TransformerConfig(text_vocab=50, text_len=4, image_vocab=40, image_len=9, d_model=16, n_layer=2, n_head=2)
    model = ImageGPT(cfg).eval()
    peak = _peak(float32=1e9)
    roof = _roofline(model, model.new_cache(2, "cpu", torch.float32), 2, 4.0, peak)
    assert roof["dtype"] == "float32" and roof["step_ms"] == pytest.approx(4.0)
    assert roof["flop_share"] == pytest.approx(roof["flops"] / 4e-3 / 1e9)
    assert _roofline(model, None, 2, 4.0, None) is None  # --profile-only with no probe: nothing to say
    text = roofline_part({"line": peak_line(peak)}, "Tessera's decode step", roof)
    assert peak_line(peak) in text and "Tessera's decode step at 2 rows (float32 weights)" in text
    assert f"{roof['roofline_share']:.1%} of the roofline" in text


@pytest.mark.slow  # an offline bench run and one image at the sampler's batch: about 15 s on 2 cores
def test_the_bench_prints_the_roofline_beside_images_per_s_and_keeps_it(tiny_model_dir, tmp_path, capsys):
    from tessera.bench import main
    assert main(["--compare", "offline", "--concurrency", "1", "--requests", "1", "--num-candidates", "1",
                 "--model-dir", str(tiny_model_dir), "--out", str(tmp_path), "--probe-seconds", "0.01"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    table_at = next(i for i, line in enumerate(lines) if "img/s" in line)
    roof_at = next(i for i, line in enumerate(lines) if line.startswith("roofline"))
    assert roof_at > table_at
    assert lines[roof_at + 1].strip().startswith("peak on cpu: matmul float32")
    step = lines[roof_at + 2]
    assert "decode step of" in step and "rows (float32 weights)" in step and "of the roofline" in step
    report = json.loads((tmp_path / "bench.json").read_text())["roofline"]
    capacity = report["decode"]["rows"]
    assert report["decode"]["cost"]["linear_flops"]["float32"] > 0 and capacity > 0
    assert report["peaks"]["cpu"]["threads"]["torch_threads"] == torch.get_num_threads()
    assert report["lines"] == [line.strip() for line in lines[roof_at + 1:roof_at + 3]]
