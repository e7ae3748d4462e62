"""The shipped configuration, used when `tessera serve` gets no --config.

deploy/default.yaml is the same configuration as a file to copy and edit (a test keeps
the two equal).
"""
from __future__ import annotations

DEFAULT_CONFIG: dict = {
    # path None: the bundled shapes-dalle model; else a Tessera model directory, a DALLE-pytorch
    # checkpoint (.pt, with bpe_path, vae, clip) or min-dalle's directory (README, Models).
    "model": {"path": None, "bpe_path": None, "vae": None, "clip": None},
    "server": {
        "host": "127.0.0.1",
        "port": 50051,
        "metrics_port": 9090,
        "http_port": 8080,
        "limits": {"max_num_images": 16, "max_num_candidates": 64, "max_prompt_chars": 1000,
                   "max_message_bytes": 16777216},
    },
    "graph": {
        "output": "rerank",
        "default_deadline_ms": 120000,
        "max_inflight": 512,
        "shutdown_grace_s": 30.0,
        "device_turns": True,
        "progress_interval_ms": 100,
        "ops": {
            "tokenize": {"type": "tessera.ops.tokenize:TokenizeOp", "inputs": ["request"],
                         "batch_size": 32, "batch_timeout_ms": 1, "channel_capacity": 512},
            # Two workers: on a CPU, past half a batch of rows the second steps beside the turn,
            # on its share of the cores (docs/performance.md); on a GPU the CUDA platform runs
            # one stepping worker per device (a second would only alternate with it).
            "sample": {"type": "tessera.ops.sample:SampleOp", "inputs": ["tokenize"],
                       "batch_size": 64, "concurrency": 2, "channel_capacity": 512},
            "decode": {"type": "tessera.ops.decode:DecodeOp", "inputs": ["sample"],
                       "batch_size": 64, "batch_timeout_ms": 2, "channel_capacity": 512},
            "clip_text": {"type": "tessera.ops.clip_text:ClipTextOp", "inputs": ["tokenize"],
                          "batch_size": 32, "batch_timeout_ms": 1, "channel_capacity": 512},
            # A fan-in OP names its inputs: each of rerank's names maps to the OP feeding it.
            "rerank": {"type": "tessera.ops.rerank:RerankOp",
                       "inputs": {"images": "decode", "text_embedding": "clip_text"},
                       "batch_size": 16, "batch_timeout_ms": 2, "channel_capacity": 512},
        },
    },
}
