"""`tessera bench`: throughput and latency, measured side by side (run), its summaries,
table and plot (report), the servers it starts (servers), the generic batching server it
compares against (generic) and a no-op OP (noop); `tessera reliability` (reliability).

Its own distribution (bench/pyproject.toml, tessera-serving-bench), neither the server's nor
the client's: it drives both, starting servers, calling them through the client and running
the OPs in process, so it depends on both and serving installs none of its libraries.
"""
from __future__ import annotations

from tessera.bench.run import (closed_loop, engine_only, kv_profile, main, offline_run, open_loop, run,
                               shapes_prompts)

__all__ = ["closed_loop", "engine_only", "kv_profile", "main", "offline_run", "open_loop", "run", "shapes_prompts"]
