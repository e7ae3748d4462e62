"""Channels: bounded async queues between OPs, joining an OP's inputs per request.

One Channel sits in front of each OP. Every producer OP puts its output for a request
under its own name (fan-out is a put into each consumer's channel); when all of the
OP's inputs have arrived for a request, they are joined under the names the consuming
OP gives its inputs (InputMap.join) and the packet becomes ready (fan-in).
Capacity bounds ready packets; partial joins are bounded by admission (max_inflight),
so a fast branch can never fill the channel and starve the slow one into deadlock.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from tessera.server.engine.config import InputMap
from tessera.server.engine.request import Request


@dataclass
class Packet:
    request: Request
    value: Any
    arrived: float


class Channel:
    def __init__(self, name: str, inputs: InputMap, capacity: int, on_depth=None):
        self.name = name
        self.inputs = inputs
        self.capacity = capacity
        self._parts: dict[str, dict[str, Any]] = {}
        self._ready: OrderedDict[str, Packet] = OrderedDict()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._on_depth = on_depth or (lambda depth: None)

    def __len__(self) -> int:
        return len(self._ready)

    @property
    def full(self) -> bool:
        return len(self._ready) >= self.capacity

    def _add(self, request: Request, source: str, value: Any) -> None:
        if len(self.inputs) == 1:
            joined = self.inputs.join({source: value})
        else:
            parts = self._parts.setdefault(request.id, {})
            parts[source] = value
            if len(parts) < len(self.inputs):
                return
            joined = self.inputs.join(self._parts.pop(request.id))
        self._ready[request.id] = Packet(request, joined, time.monotonic())
        self._readable.set()
        if self.full:
            self._writable.clear()
        self._on_depth(len(self._ready))

    def offer(self, request: Request, source: str, value: Any) -> bool:
        """Put without waiting; False when full (the entry refuses the request)."""
        if self.full:
            return False
        self._add(request, source, value)
        return True

    async def put(self, request: Request, source: str, value: Any) -> None:
        """Put, waiting while the channel is full (back-pressure on the producer)."""
        while self.full and not request.done:
            await self._writable.wait()
        if not request.done:
            self._add(request, source, value)

    async def get(self) -> Packet:
        while not self._ready:
            self._readable.clear()
            await self._readable.wait()
        return self._pop()

    def _pop(self) -> Packet:
        _, packet = self._ready.popitem(last=False)
        self._after_take()
        return packet

    def _after_take(self) -> None:
        if not self.full:
            self._writable.set()
        if not self._ready:
            self._readable.clear()
        self._on_depth(len(self._ready))

    def remove(self, request_id: str) -> None:
        """Forget a request (cancelled, expired or failed elsewhere)."""
        self._parts.pop(request_id, None)
        if self._ready.pop(request_id, None) is not None:
            self._after_take()
