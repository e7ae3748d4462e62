from __future__ import annotations

import contextlib

from tessera.server.engine import Engine, GraphConfig

T = "tests.server.engine.toy_ops:"


def chain(*ops: tuple[str, str, dict], **top) -> GraphConfig:
    """A linear graph: request -> ops[0] -> ops[1] -> ...; each op (name, class, settings)."""
    raw, prev = {"ops": {}, "output": ops[-1][0], **top}, "request"
    for name, cls, extra in ops:
        raw["ops"][name] = {"type": T + cls, "inputs": [prev], **extra}
        prev = name
    return GraphConfig.from_dict(raw)


@contextlib.asynccontextmanager
async def running(config: GraphConfig, grace_s: float = 5.0):
    engine = Engine(config)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop(grace_s)
