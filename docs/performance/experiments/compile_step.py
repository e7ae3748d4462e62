"""The sampler's decode step: eager, padded and torch.compile'd, side by side
(docs/performance.md, The decode step). An experiment kept beside its figures, not installed;
nothing here runs in the test suite. Run it from the repository root with the server installed:

    python docs/performance/experiments/compile_step.py --threads 2 --out step.json

Builds the bundled model's decode step over one KV cache at the given buckets, compiles
it (timed), then times each mode at each row count in interleaved rounds (the order
alternates round to round), and reports the compiled/eager ratio per round.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def measure(threads: int, buckets: list[int], rounds: int, calls: int, slots: int, device: str) -> dict:
    import torch

    from tessera.ops.decoding import BucketedDecoder
    from tessera.ops.families.tessera.loading import load_model_dir
    from tessera.ops.families.tessera.transformer import KVCache
    torch.set_num_threads(threads)
    model = load_model_dir(None, device=device, dtype=torch.float32).transformer
    cache = KVCache(model.cfg, slots, device)
    out: dict = {"threads": threads, "buckets": buckets, "torch": torch.__version__,
                 "env": {k: v for k, v in os.environ.items() if k.startswith(("OMP", "GOMP", "KMP"))}}
    t = time.perf_counter()
    compiled = BucketedDecoder(model, cache, buckets, "compile")
    out["compile_s"] = time.perf_counter() - t
    padded = BucketedDecoder(model, cache, buckets, "padded")
    times: dict[str, list[float]] = {}
    diff = 0.0
    with torch.inference_mode():
        for r in range(rounds):
            for n in buckets:
                tok = torch.randint(0, model.cfg.image_vocab, (n,), device=device)
                idx = torch.randint(0, model.cfg.image_len - 1, (n,), device=device)
                fns = {"eager": lambda: model.decode_step(tok, idx, cache), "padded": lambda: padded(tok, idx),
                       "compile": lambda: compiled(tok, idx)}
                for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
                    for _ in range(3):
                        fns[name]()
                    t = time.perf_counter()
                    for _ in range(calls):
                        fns[name]()
                    times.setdefault(f"{n} {name}", []).append(1000 * (time.perf_counter() - t) / calls)
                diff = max(diff, float((fns["eager"]() - fns["compile"]()).abs().max()))
    out["ms_per_step"] = times
    out["ratio_compile_over_eager"] = {n: [c / e for c, e in zip(times[f"{n} compile"], times[f"{n} eager"])]
                                       for n in buckets}
    out["max_abs_logit_diff"] = diff
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python docs/performance/experiments/compile_step.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch's threads")
    ap.add_argument("--buckets", default="4,16,64", help="row counts, each compiled and timed")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=30, help="timed steps per mode, row count and round")
    ap.add_argument("--slots", type=int, default=128, help="the KV cache's slots (the sampler's: 2 x batch_size)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, help="write the figures here as JSON too")
    args = ap.parse_args(argv)
    result = measure(args.threads, [int(b) for b in args.buckets.split(",")], args.rounds, args.calls,
                     args.slots, args.device)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
