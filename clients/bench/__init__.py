"""`tessera bench`: throughput and latency, measured side by side (run), its summaries,
table and plot (report), the servers it starts (servers), the generic batching server it
compares against (generic; the `bench` extra) and a no-op OP (noop).

Installed with the server distribution, not the client's: it starts servers and runs the
offline pipeline, which need torch.
"""
from __future__ import annotations

from tessera.bench.run import (closed_loop, engine_only, kv_profile, main, offline_run, open_loop, run,
                                       shapes_prompts)

__all__ = ["closed_loop", "engine_only", "kv_profile", "main", "offline_run", "open_loop", "run", "shapes_prompts"]
