"""The served graph's OPs called directly, in process, with no engine and no RPC.

The evaluation command uses it, and the benchmark's `offline` ceiling. It is built from a
graph configuration (GraphConfig), normally the one the server serves: each configured OP
with its configured settings, wired by the configured inputs, so the same seeds give the
same images. The server's reading of its configuration file (model section, defaults) is
the app's: `served_graph` there gives the graph `tessera serve` would serve.

    from tessera.server.config import served_graph
    pipe = LocalPipeline(served_graph(model_dir=None), capacity=64)   # the shipped graph; None: the bundled model
    [best] = pipe.generate([GenerateParams("a red circle", num_images=1, num_candidates=16, seed=7)])
    best.images[0].png
    pipe.sample, pipe.decode                  # each configured OP, by its name in the graph
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from tessera.ops.messages import CandidateRow, GenerateParams, RankedImages, SampledCandidate, TokenizedPrompt
from tessera.server.engine import REQUEST, ConfigError, GraphConfig, Op, SteppingOp, StepRow


class LocalPipeline:
    def __init__(self, graph: GraphConfig, device: str = "cpu", capacity: int | None = None,
                 dtype: str | None = None, forward_mode: str | None = None,
                 forward_buckets: list[int] | None = None, **sample_settings: Any):
        """`graph` is a validated graph configuration, its model files already in its OPs'
        settings (tessera.server.config.served_graph). `dtype`, `forward_mode` and
        `forward_buckets` (None: as configured) and `sample_settings` (`decode_mode`, ...) go to
        each OP whose settings take them, over the configured ones; `capacity` (None: its
        configured batch_size) bounds the stepping OP's running batch. Every OP runs on `device`."""
        if not isinstance(graph, GraphConfig):  # e.g. a model directory, as this once took
            raise TypeError(f"LocalPipeline takes a GraphConfig, got {type(graph).__name__}; "
                            "build one with tessera.server.config.served_graph(model_dir=...)")
        overrides = {"dtype": dtype, "forward_mode": forward_mode, "forward_buckets": forward_buckets}
        overrides = {k: v for k, v in overrides.items() if v is not None} | sample_settings
        self.ops: dict[str, Op] = {}
        self.inputs = {name: op.inputs for name, op in graph.ops.items()}
        self.output = graph.output
        taken: set[str] = set()
        for name, op in graph.ops.items():
            known = {f.name for f in fields(op.op_class.Settings)}
            mine = {k: v for k, v in overrides.items() if k in known}
            taken |= mine.keys()
            self.ops[name] = op.op_class(**{**op.settings, **mine})
            if isinstance(self.ops[name], SteppingOp):
                self.ops[name].capacity = capacity or op.batch_size
        unknown = sorted(set(sample_settings) - taken)
        if unknown:
            raise ConfigError(unknown[0], "no OP of the graph takes this setting")
        self.order = _topological(self.inputs)
        self.first = next(name for name in self.order if REQUEST in self.inputs[name])
        for op in self.ops.values():
            op.setup(device)
        stepping = [op for op in self.ops.values() if isinstance(op, SteppingOp)]
        self.bundle = getattr(stepping[0] if stepping else self.ops[self.first], "bundle", None)

    def __getattr__(self, name: str) -> Op:
        """Each OP by its name in the graph: pipe.tokenize, pipe.sample, ..."""
        ops = self.__dict__.get("ops", {})
        if name in ops:
            return ops[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or OP {name!r}")

    def tokenized(self, requests: list[GenerateParams]) -> list[TokenizedPrompt]:
        """The first OP's output for each request; raises the first prompt's error, if any."""
        inputs, op = self.inputs[self.first], self.ops[self.first]
        joined = [inputs.join({REQUEST: r}) for r in requests]
        return self._run(self.first, [op.split(v) for v in joined], joined)

    def sample_rows(self, rows: list[CandidateRow]) -> list[SampledCandidate]:
        """Run rows through the stepping OP at its full batch; results in row order."""
        [op] = [op for op in self.ops.values() if isinstance(op, SteppingOp)]
        return self._stepped(op, rows)

    def generate(self, requests: list[GenerateParams]) -> list[RankedImages]:
        """Each request's output (the DALL·E graph: its best `num_images` images, best first).

        Every OP runs once over the rows of all the requests, in the graph's order, as one
        batch (a stepping OP at its capacity); an OP's failed row raises its error."""
        if not requests:
            return []
        values: dict[str, list[Any]] = {REQUEST: list(requests)}
        for name in self.order:
            inputs = self.inputs[name]
            joined = [inputs.join({source: values[source][i] for source in inputs}) for i in range(len(requests))]
            op = self.ops[name]
            values[name] = self._run(name, [op.split(v) for v in joined], joined)
        return values[self.output]

    def _run(self, name: str, rows: list[list[Any]], values: list[Any]) -> list[Any]:
        """One OP over every request's rows at once; each request's merged output."""
        op = self.ops[name]
        flat = [row for request_rows in rows for row in request_rows]
        results = self._stepped(op, flat) if isinstance(op, SteppingOp) else op.process(flat)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        out, at = [], 0
        for value, request_rows in zip(values, rows):
            out.append(op.merge(value, results[at:at + len(request_rows)]))
            at += len(request_rows)
        return out

    @staticmethod
    def _stepped(op: SteppingOp, rows: list[Any]) -> list[Any]:
        pending = list(enumerate(rows))
        out: dict[int, Any] = {}
        while pending or op.active:
            room = op.capacity - op.active
            admit, pending = pending[:room], pending[room:]
            if admit:
                op.admit([StepRow(i, r) for i, r in admit])
            out.update(op.step().finished)
        return [out[i] for i in range(len(rows))]


def _topological(inputs: dict[str, Any]) -> list[str]:
    """The OPs in an order where each comes after those feeding it (the configured order where
    it can); the configuration has been checked to be acyclic."""
    order: list[str] = []
    while len(order) < len(inputs):
        for name, sources in inputs.items():
            if name not in order and all(s == REQUEST or s in order for s in sources):
                order.append(name)
                break
    return order
