"""The CUDA platform: no thread policy and no node turns; one stepping worker per GPU;
half precision; CUDA graphs for bucketed model calls, captured on a side stream.

A stepping OP's second thread worker on one GPU does not step beside the first, as it
does on a CPU's spare cores: the GPU runs one call at a time (the device's turn, or its
one default stream), so the two would only alternate, each with half the rows. The
platform runs one per GPU instead and says so once, which makes a configuration written
for the CPU (`sample.concurrency: 2`) right on a GPU with no edits. Workers on different
GPUs (`devices: [cuda:0, cuda:1]`) all run; process and Ray workers are left as asked.

What an OP asks of a GPU (`CudaCompute`): weights in float16 for `dtype: auto` (bfloat16 or
float32 when named); "auto" model calls captured as CUDA graphs, one per batch-size bucket
(`CudaGraphs`, cuda_graphs.py); the memory free on the device (`torch.cuda.mem_get_info`).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tessera.server.engine.platforms import Compute, Platform, WorkerPlan

if TYPE_CHECKING:
    from tessera.server.engine.config import OpConfig


__all__ = ["CudaCompute", "CudaPlatform"]


class CudaCompute(Compute):
    kind = "cuda"
    auto_mode = "cuda_graph"  # measured on an H200: docs/performance.md, On a GPU
    modes = ("padded", "compile", "cuda_graph")

    def auto_dtype(self, family: str | None) -> str:
        return "float16"  # as `half: true` gave before the dtype setting (docs/performance.md, On a GPU)

    def bucketed(self, fn, rows, buckets, mode, pad="zero"):
        if mode == "cuda_graph":
            from tessera.server.engine.platforms.cuda_graphs import CudaGraphs
            return CudaGraphs(fn, rows, buckets, mode, pad)
        return super().bucketed(fn, rows, buckets, mode, pad)

    def free_memory(self) -> int:
        import torch
        return torch.cuda.mem_get_info(torch.device(self.device))[0]


class CudaPlatform(Platform):
    kind = "cuda"
    Compute = CudaCompute

    def plan(self, cfg: OpConfig, index: int, device: str) -> WorkerPlan | None:
        if cfg.stepping and cfg.mode == "thread" and cfg.op_class.uses_device:
            earlier = {cfg.devices[i % len(cfg.devices)] for i in range(index)}
            if device in earlier:
                self.tell_once(cfg, logging.INFO, "%s: one stepping worker per GPU (concurrency %d asks for more on "
                               "%s; a second would only alternate with the first)", cfg.name, cfg.concurrency, device)
                return None
        return WorkerPlan(None, self.turn_thread(cfg, device))
