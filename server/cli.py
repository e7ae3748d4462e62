"""`tessera`: serve, and everything else that needs the server side; generate and info too.

    tessera serve                          # the bundled model on 127.0.0.1:50051
    tessera config --schema                # the configuration file's JSON Schema, for an editor
    tessera generate "a red circle" -n 4   # from a second terminal
    tessera bench --compare default,offline --concurrency 1,8
    tessera reliability --calls 1500 --concurrency 48
    tessera train --preset default --work runs/default --out ops/bundled/shapes-dalle
    tessera evaluate --model ops/bundled/shapes-dalle --out runs/eval --card

`generate` and `info` are the client distribution's commands (tessera.clients.cli), the
same as `tessera-client generate` and `tessera-client info`; this command adds those that
load the model or start servers. `bench` and `reliability` are the benchmark's
(tessera.bench, its own distribution: pip install -e ./bench), which this one does not
depend on: without it they say how to install it.
"""
from __future__ import annotations

import importlib.util
import sys

from tessera.clients.cli import COMMANDS as CLIENT_COMMANDS
from tessera.clients.cli import Command, dispatch

COMMANDS = (
    Command("serve", "tessera.server.main", "serve text-to-image over gRPC and HTTP/JSON, with a web page"),
    Command("config", "tessera.server.config_docs",
            "the configuration file's JSON Schema (--schema), reference (--docs), or a file checked (--check)"),
    *CLIENT_COMMANDS,
    Command("bench", "tessera.bench.run", "measure throughput and latency, configurations side by side"),
    Command("reliability", "tessera.bench.reliability",
            "soak, burst, SIGTERM, fuzz and auth checks against servers it starts"),
    Command("train", "tessera.ops.training.train", "train the DALL·E models from scratch"),
    Command("evaluate", "tessera.server.evaluate", "measure a model directory against the pixel checker"),
)


BENCH = "tessera.bench"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((c for c in COMMANDS if argv and argv[0] == c.name), None)
    if chosen and chosen.module.startswith(BENCH + ".") and importlib.util.find_spec(BENCH) is None:
        print(f"tessera {chosen.name} comes with the benchmark's distribution, tessera-serving-bench: "
              "pip install -e ./bench in a checkout", file=sys.stderr)
        return 2
    return dispatch("tessera", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
