"""The kernel facts the CPU's precision choice rests on (server/engine/platforms/precision.py,
ops/families/base.py's attend, the VQGAN's layout), measured in one process, interleaved:

1. nn.Linear at DALL·E Mini's shapes, float32 against bfloat16, ms per call at 1-64 rows.
2. Row invariance of those kernels: a row's output alone (1 row) and within a batch of M.
3. Attention: scaled_dot_product_attention against `attend`, across batch sizes and live lengths.
4. min-dalle's VQGAN per image: float32 / bfloat16, NCHW / channels-last; GroupNorm by batch size.

    python docs/performance/experiments/precision_kernels.py [--vqgan /tmp/md-root/mini/vqgan/detoker.pt]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from tessera.ops.families.base import attend


def ms(fn, n: int = 20) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


def linears(rounds: int) -> None:
    print("## 1-2. Linear layers (E=1024, GLU 2730): ms per call, float32 vs bfloat16; row invariance")
    torch.manual_seed(0)
    for k, n in ((1024, 1024), (1024, 2730), (2730, 1024), (1024, 16384)):
        lins = {dt: torch.nn.Linear(k, n, bias=False).to(dt) for dt in (torch.float32, torch.bfloat16)}
        lins[torch.bfloat16].weight.data = lins[torch.float32].weight.data.to(torch.bfloat16)
        x = torch.randn(64, k)
        with torch.inference_mode():
            for m in (1, 2, 4, 8, 16, 32, 64):
                t = {dt: [] for dt in lins}
                for _ in range(rounds):
                    for dt, lin in lins.items():
                        xi = x[:m].to(dt)
                        t[dt].append(ms(lambda: lin(xi)))
                f32, b16 = min(t[torch.float32]), min(t[torch.bfloat16])
                print(f"K={k} N={n} rows={m}: float32 {f32:.3f} ms, bfloat16 {b16:.3f} ms, {f32 / b16:.2f}x")
            for dt, lin in lins.items():
                xb = x.to(dt)
                batched = lin(xb)
                alone = torch.cat([lin(xb[i:i + 1]) for i in range(8)])
                pairs = torch.cat([lin(xb[i:i + 2])[:1] for i in range(8)])
                print(f"  {dt}: rows alone == rows in a batch of 64: {torch.equal(alone, batched[:8])}; "
                      f"rows in a batch of 2 == in 64: {torch.equal(pairs, batched[:8])}")


def attention() -> None:
    print("## 3. Attention over a cache: batch invariance and exactness over a live prefix")
    torch.manual_seed(0)
    for dt in (torch.float32, torch.bfloat16):
        q = torch.randn(64, 16, 1, 64).to(dt)
        k, v = torch.randn(64, 16, 256, 64).to(dt), torch.randn(64, 16, 256, 64).to(dt)
        pos = torch.randint(0, 60, (64,))
        mask = (torch.arange(256)[None] <= pos[:, None])[:, None, None, :]
        for name, f in (("sdpa", lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)),
                        ("attend", attend)):
            with torch.inference_mode():
                ref = f(q, k, v, mask)
                batch = all(torch.equal(f(q[:m], k[:m], v[:m], mask[:m]), ref[:m]) for m in (1, 2, 7, 33))
                live = all(torch.equal(f(q, k[:, :, :L], v[:, :, :L], mask[..., :L]), ref) for L in (64, 96, 128))
                t = ms(lambda: f(q, k[:, :, :64], v[:, :, :64], mask[..., :64]))
            print(f"  {dt} {name}: batch-invariant {batch}; live prefix exact {live}; {t:.2f} ms at 64 rows x 64 positions")


def vqgan(path: str) -> None:
    from tessera.ops.families.base import load_weights_only
    from tessera.ops.families.min_dalle.vqgan import build_vqgan
    print("## 4. min-dalle's VQGAN: seconds per image")
    sd = load_weights_only(path)
    tok = torch.randint(0, 16384, (4, 256), generator=torch.Generator().manual_seed(0))
    ref = build_vqgan(sd, "cpu").pixels(tok[:2])
    for dt in (torch.float32, torch.bfloat16):
        for cl in (False, True):
            m = build_vqgan(sd, "cpu", dt)
            m.channels_last = cl
            m.decoder.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            m.post_quant_conv.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            with torch.inference_mode():
                for b in (1, 4):
                    t = time.perf_counter()
                    m.decode(tok[:b])
                    s = (time.perf_counter() - t) / b
                    print(f"  {dt} {'channels-last' if cl else 'NCHW'} batch {b}: {s:.2f} s/image")
                d = (m.pixels(tok[:2]).int() - ref.int()).abs()
                print(f"    pixels vs float32 NCHW: max {int(d.max())} levels, mean {float(d.float().mean()):.3f}")
    print("  GroupNorm(32) in bfloat16, channels-last, (B, 256, 64, 64): batch sizes whose rows differ from B=8's")
    x = torch.randn(8, 256, 64, 64).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    gn = torch.nn.GroupNorm(32, 256).to(torch.bfloat16)
    with torch.inference_mode():
        full = gn(x)
        print("   ", [b for b in range(1, 9) if not torch.equal(gn(x[:b]), full[:b])])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vqgan")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP/MKL variables: {({k: v for k, v in os.environ.items() if k.startswith(('OMP_', 'MKL_', 'GOMP_'))})}, "
          f"load {open('/proc/loadavg').read().split()[:3]}")
    linears(args.rounds)
    attention()
    if args.vqgan:
        vqgan(args.vqgan)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
