"""Bucketed model calls as CUDA graphs (buckets.py, mode "cuda_graph"): the CUDA platform's
way to run an OP's model call (cuda.py, CudaCompute.bucketed)."""
from __future__ import annotations

import torch

from tessera.server.engine.platforms.buckets import Bucketed

__all__ = ["CudaGraphs"]


class CudaGraphs(Bucketed):
    """One CUDA graph per bucket, captured once and replayed: a call's kernels launch as one
    unit instead of one Python-dispatched op at a time. Warm-up runs on a side stream, off
    the capture; the buckets share one memory pool."""

    modes = ("cuda_graph",)

    def _prepare(self, device: torch.device) -> None:
        self._out: dict[int, torch.Tensor] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode():
            for b in self.buckets:  # warm-up runs off the capture (lazy inits, workspaces)
                for _ in range(2):
                    self.fn(*self._buffers[b])
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.inference_mode():
            for b in reversed(self.buckets):  # largest first, so smaller ones reuse its pool
                graph = torch.cuda.CUDAGraph()
                # Errors only for this thread's work: other OPs' threads may use the GPU meanwhile.
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    self._out[b] = self.fn(*self._buffers[b])
                self._graphs[b] = graph
        torch.cuda.synchronize(device)

    def _run(self, b: int, buffers: list[torch.Tensor], n: int) -> torch.Tensor:
        self._graphs[b].replay()
        return self._out[b][:n].clone()  # the graph's output buffer is reused by the next replay
