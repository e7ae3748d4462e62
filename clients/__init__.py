"""Tessera's clients: the Python client library, the command line, the benchmark."""
from __future__ import annotations

from tessera.clients.client import (AsyncTesseraClient, GeneratedImage, Generation, ModelStatus, ProgressEvent,
                                    ServerInfo, StageTiming, TesseraClient, TesseraError)

__all__ = ["AsyncTesseraClient", "GeneratedImage", "Generation", "ModelStatus", "ProgressEvent", "ServerInfo",
           "StageTiming", "TesseraClient", "TesseraError"]
