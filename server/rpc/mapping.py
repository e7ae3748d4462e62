"""What the served pipeline says about its two ends: request fields -> its first message, its
last message -> response fields, and what it serves. The front doors know no model; the
graph's OPs do.

    mapping = PipelineMapping.of(config.graph)
    payload = mapping.from_request({"prompt": "a red circle", "num_images": 2}, limits, streaming=False)
    fields = mapping.to_response(result.value)    # {"images": [...], "unknown_words": [...], ...}
    info = describe_pipeline(config.graph)        # GetInfo's model fields: {"name": ..., "kind": ...}

The OP that takes the `request` input provides `from_request(fields, limits, *, streaming)`
(raising InvalidInput with a sentence for the caller), and the graph's output OP provides
`to_response(value)` and, optionally, `describe(settings)`; all are found from the configured
OP types, so another graph with other OPs maps its own requests and responses and says what
it is.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tessera.server.engine import ConfigError
from tessera.server.engine.config import REQUEST
from tessera.server.engine.settings import parse_settings

FromRequest = Callable[..., Any]               # (fields, limits, *, streaming) -> the first OP's input
ToResponse = Callable[[Any], Mapping[str, Any]]  # the output OP's result -> response fields


@dataclass(frozen=True)
class PipelineMapping:
    from_request: FromRequest
    to_response: ToResponse

    @classmethod
    def of(cls, graph: Any) -> PipelineMapping:
        """The mapping of a validated graph configuration (GraphConfig), or ConfigError naming the
        OP that lacks its half."""
        entries = [(name, op) for name, op in graph.ops.items() if REQUEST in op.inputs]
        hooks = {}
        for name, op in entries:
            hook = getattr(op.op_class, "from_request", None)
            if hook is None:
                raise ConfigError(f"ops.{name}.type", f"{op.type} takes the request but has no from_request "
                                                      "to map a request's fields to its input")
            hooks[name] = hook
        if len(set(hooks.values())) != 1:
            raise ConfigError("ops", f"the OPs that take the request ({', '.join(hooks)}) map it differently; "
                                     "one OP should take the request and feed the others")
        out = graph.ops[graph.output]
        to_response = getattr(out.op_class, "to_response", None)
        if to_response is None:
            raise ConfigError(f"ops.{graph.output}.type", f"{out.type} is the output but has no to_response "
                                                          "to map its result to the response's fields")
        return cls(from_request=next(iter(hooks.values())), to_response=to_response)



# What GetInfo says of a graph whose output OP does not describe itself: no model.
NO_MODEL: dict[str, Any] = {
    "name": "", "kind": "", "image_width": 0, "image_height": 0, "text_context": 0, "image_tokens": 0,
    "sampling": {}, "tokenizer": "", "rerank": False, "reranker": "", "details": {}, "vocabulary": {},
    "shapes": {}}


def describe_pipeline(graph: Any) -> dict[str, Any]:
    """What the validated graph serves, as GetInfo's fields: the output OP's own
    `describe(settings)` (the OP that maps the response says what it is), over NO_MODEL's
    blanks; without one, that the graph serves no model, naming its OPs."""
    out = graph.ops[graph.output]
    describe = getattr(out.op_class, "describe", None)
    if describe is not None:
        return {**NO_MODEL, **describe(parse_settings(out.op_class.Settings, out.settings))}
    ops = ", ".join(f"{name} ({op.type})" for name, op in graph.ops.items())
    return {**NO_MODEL, "name": "no model", "details": {"ops": ops, "output": graph.output}}
