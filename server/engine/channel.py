"""Channels: bounded async queues between OPs, joining an OP's inputs per request.

One Channel sits in front of each OP. Every producer OP puts its output for a request
under its own name (fan-out is a put into each consumer's channel); when all of the
OP's inputs have arrived for a request, they are joined under the names the consuming
OP gives its inputs (InputMap.join) and the packet becomes ready (fan-in).
Capacity bounds ready packets; partial joins are bounded by admission (max_inflight),
so a fast branch can never fill the channel and starve the slow one into deadlock.
Ready packets leave in the order of their requests' ranks (graph.policy: policy.py).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from tessera.server.engine.config import InputMap
from tessera.server.engine.policy import Ordered
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
        self._ready: dict[str, Packet] = {}
        self._order: Ordered[Packet] = Ordered()  # the ready packets by their requests' ranks
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._on_depth = on_depth or (lambda depth: None)

    def __len__(self) -> int:
        return len(self._ready)

    @property
    def first_rank(self):
        """The rank of the ready packet that leaves next (None: none is ready)."""
        return self._order.peek_rank()

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
        packet = Packet(request, joined, time.monotonic())
        self._ready[request.id] = packet
        self._order.push(packet, request.rank)
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
        packet = self._order.pop()
        del self._ready[packet.request.id]
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
        packet = self._ready.pop(request_id, None)
        if packet is not None:
            self._order.remove(lambda p: p is packet)
            self._after_take()
