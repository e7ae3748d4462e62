"""The CUDA platform: no thread policy and no node turns; one stepping worker per GPU.

A stepping OP's second thread worker on one GPU does not step beside the first, as it
does on a CPU's spare cores: the GPU runs one call at a time (the device's turn, or its
one default stream), so the two would only alternate, each with half the rows. The
platform runs one per GPU instead and says so once, which makes a configuration written
for the CPU (`sample.concurrency: 2`) right on a GPU with no edits. Workers on different
GPUs (`devices: [cuda:0, cuda:1]`) all run; process and Ray workers are left as asked.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tessera.server.engine.platforms import Platform, WorkerPlan

if TYPE_CHECKING:
    from tessera.server.engine.config import OpConfig

log = logging.getLogger("tessera.engine")

__all__ = ["CudaPlatform"]


class CudaPlatform(Platform):
    kind = "cuda"

    def __init__(self, graph):
        super().__init__(graph)
        self._told: set[str] = set()

    def plan(self, cfg: OpConfig, index: int, device: str) -> WorkerPlan | None:
        if cfg.stepping and cfg.mode == "thread" and cfg.op_class.uses_device:
            earlier = {cfg.devices[i % len(cfg.devices)] for i in range(index)}
            if device in earlier:
                if cfg.name not in self._told:
                    self._told.add(cfg.name)
                    log.info("%s: one stepping worker per GPU (concurrency %d asks for more on %s; "
                             "a second would only alternate with the first)", cfg.name, cfg.concurrency, device)
                return None
        takes_turns = cfg.mode == "thread" and cfg.op_class.uses_device
        return WorkerPlan(device, None, self.device_thread(device) if takes_turns else None)
