"""Tessera's graph engine: OPs, Channels, batching, workers. No torch, no protobuf."""
from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from tessera.server.engine.config import REQUEST, GraphConfig, OpConfig
from tessera.server.engine.engine import Engine
from tessera.server.engine.errors import (Cancelled, ConfigError, DeadlineExceeded, EngineError, InvalidInput,
                                  OpFailed, Overloaded, ShuttingDown)
from tessera.server.engine.metrics import EngineMetrics
from tessera.server.engine.op import Op, SteppingOp, StepProgress, StepResult, StepRow
from tessera.server.engine.request import Progress, Request, Result, StageTiming

__all__ = [
    "REQUEST", "GraphConfig", "OpConfig", "Engine", "EngineMetrics", "run",
    "EngineError", "Cancelled", "ConfigError", "DeadlineExceeded", "InvalidInput", "OpFailed",
    "Overloaded", "ShuttingDown",
    "Op", "SteppingOp", "StepProgress", "StepResult", "StepRow",
    "Progress", "Request", "Result", "StageTiming",
]


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
