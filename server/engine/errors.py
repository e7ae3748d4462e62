"""The engine's errors. The RPC layer maps each to one gRPC status code, in one place.

    EngineError
     ├── InvalidInput       the request's content is unusable (raised by an OP)
     ├── Overloaded         refused at admission: the entry is full
     ├── DeadlineExceeded   the request's deadline passed
     ├── Cancelled          the caller went away
     ├── ShuttingDown       the engine no longer admits, or stopped before it finished
     ├── OpFailed           an OP raised or timed out; names the OP
     └── ConfigError        the graph configuration is wrong; names the key
"""
from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine hands to a caller."""


class InvalidInput(EngineError):
    """Raise from an OP to tell the caller their input is at fault.

    `fields` are the request fields (proto names, e.g. "num_images") the message mentions, so
    a front door whose callers spell fields otherwise (HTTP's camelCase JSON) can reword it;
    str(exc) is the gRPC wording.
    """

    def __init__(self, message: str = "", *, fields: tuple[str, ...] = ()):
        super().__init__(message)
        self.fields = tuple(fields)  # an attribute, so pickling (args + __dict__) keeps it


class Overloaded(EngineError):
    pass


class DeadlineExceeded(EngineError):
    pass


class Cancelled(EngineError):
    pass


class ShuttingDown(EngineError):
    pass


class OpFailed(EngineError):
    def __init__(self, op: str, message: str):
        super().__init__(f"stage {op!r} failed: {message}")
        self.op = op


class ConfigError(EngineError):
    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message
