"""`generic`: the bench's baseline, a generic request-level batching server running
Tessera's own OPs (issue 10's comparison).

LitServe collects up to 16 requests (waiting at most 5 ms for a batch to fill) and runs
the whole pipeline on them in one `LocalPipeline.generate` call, in its own inference
worker process (LitServe's default: one worker, started with `spawn`). Nothing of
Tessera's engine is involved: no iteration-level batching, no channels, no per-OP
batches. It answers JSON over HTTP; the bench's HTTP client (bench/run.py) sends the same
prompts, seeds and parameters as its gRPC one.

    python -m tessera.bench.generic --port 8123
    curl -s http://127.0.0.1:8123/predict -d '{"prompt": "a red circle", "seed": 7, "num_candidates": 4}'

Requests are checked as the real server checks them (the shipped graph's mapping,
ops/requests.py) while
LitServe's API process parses them, so a bad one is a 400 of its own and never fails the
batch it would have joined. A prompt too long for the text context is found only by the
tokenizer, in the worker; it too is a 400 for that request alone.

LitServe and httpx are the bench distribution's dependencies (bench/pyproject.toml).
"""
# No `from __future__ import annotations` here: LitServe hands decode_request's parameter
# annotation to FastAPI as the body's type, and it must be the class, not a string.
import argparse
import base64
import os
import signal
import sys

import litserve
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tessera.ops.messages import GenerateParams, RankedImages
from tessera.ops.requests import generate_params
from tessera.server.config import Limits
from tessera.server.engine import InvalidInput
from tessera.server.engine.platforms import DTYPES

LIMITS = Limits()  # the shipped server's limits
MAX_BATCH_SIZE = 16  # requests per batch, as issue 10's baseline
BATCH_TIMEOUT_MS = 5.0


class GenerateBody(BaseModel):
    """The JSON body of POST /predict: the gRPC GenerateRequest's fields, snake_case; 0 asks
    for the default, as in the proto. Unknown fields are refused, as the real server does."""
    model_config = ConfigDict(extra="forbid")

    prompt: str
    num_images: int = Field(0, ge=0)
    num_candidates: int = Field(0, ge=0)
    seed: int = Field(0, ge=0, lt=2 ** 64)
    temperature: float = 0.0
    top_k: int = Field(0, ge=0)
    top_p: float = 0.0
    guidance_scale: float = 0.0
    preview_every: int = Field(0, ge=0)  # refused by the rules below: this server does not stream

    @model_validator(mode="after")
    def _server_rules(self) -> "GenerateBody":
        try:
            generate_params(self.model_dump(), LIMITS, streaming=False)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None  # pydantic reports ValueErrors as validation errors
        return self


class TesseraLitAPI(litserve.LitAPI):
    """The whole DALL·E pipeline per LitServe batch: `LocalPipeline.generate` on the batch's
    requests, the OPs of ops/ as they are."""

    def __init__(self, model_dir: str | None = None, device: str = "cpu", capacity: int = 64,
                 settings: dict | None = None, max_batch_size: int = MAX_BATCH_SIZE,
                 batch_timeout_ms: float = BATCH_TIMEOUT_MS):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout_ms / 1000)
        # LitAPI's own `device` is LitServe's choice of accelerator; the model's is ours.
        self.model_dir, self.model_device = model_dir, device
        self.capacity, self.settings = capacity, dict(settings or {})

    def setup(self, device: str) -> None:
        from tessera.ops.pipeline import LocalPipeline  # torch loads in the worker, not the API process
        from tessera.server.config import served_graph
        self.pipeline = LocalPipeline(served_graph(model_dir=self.model_dir), self.model_device,
                                      capacity=self.capacity, **self.settings)

    def decode_request(self, request: GenerateBody) -> GenerateParams:
        # The annotation makes FastAPI parse and check the body in the API process.
        return generate_params(request.model_dump(), LIMITS, streaming=False)

    def batch(self, inputs: list[GenerateParams]) -> list[GenerateParams]:
        return list(inputs)

    def predict(self, batch: list[GenerateParams]) -> list[RankedImages | InvalidInput]:
        try:
            return self.pipeline.generate(batch)
        except InvalidInput:
            # A prompt the tokenizer refuses fails the whole call: answer it alone, run the rest.
            checked = self.pipeline.tokenize.process(batch)
            good = [p for p, t in zip(batch, checked) if not isinstance(t, InvalidInput)]
            done = iter(self.pipeline.generate(good))
            return [t if isinstance(t, InvalidInput) else next(done) for t in checked]

    def unbatch(self, output: list[RankedImages | InvalidInput]) -> list[RankedImages | InvalidInput]:
        return list(output)

    def encode_response(self, output: RankedImages | InvalidInput):
        # No return annotation: LitServe would make it FastAPI's response model.
        if isinstance(output, InvalidInput):
            return JSONResponse({"message": str(output)}, status_code=400)
        return {"images": [{"png": base64.b64encode(im.png).decode("ascii"), "clip_score": im.clip_score,
                            "seed": im.seed, "candidate_index": im.candidate_index,
                            "width": im.width, "height": im.height} for im in output.images],
                "unknown_words": list(output.unknown_words)}


async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """400 with the real server's message (FastAPI's default is a 422 with pydantic's details)."""
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # its loc is the character offset
            parts.append(f"the body is not JSON: {err.get('ctx', {}).get('error', 'malformed')}")
            continue
        where = ".".join(str(p) for p in err.get("loc", ())[1:])  # drop the leading "body"
        message = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return JSONResponse({"message": "; ".join(parts) or "invalid request body"}, status_code=400)


def build_server(args: argparse.Namespace) -> litserve.LitServer:
    settings = {k: v for k, v in (("dtype", args.dtype), ("decode_mode", args.decode_mode),
                                  ("sample_on", args.sample_on), ("forward_mode", args.forward_mode)) if v}
    api = TesseraLitAPI(args.model_dir, args.device, args.capacity, settings, args.max_batch_size,
                        args.batch_timeout_ms)
    # One inference worker; accelerator "cpu" keeps LitServe from probing for GPUs: the
    # pipeline itself goes to --device.
    server = litserve.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=args.timeout_s)
    server.app.add_exception_handler(RequestValidationError, _invalid_body)
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tessera.bench.generic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"])  # LitServe's choices
    ap.add_argument("--port", type=int, required=True, help="1024-65535 (LitServe cannot pick one)")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--capacity", type=int, default=64, help="the sampler's rows per step")
    ap.add_argument("--dtype", default=None, choices=DTYPES)
    ap.add_argument("--decode-mode", default=None)
    ap.add_argument("--sample-on", default=None, choices=["device", "cpu"])
    ap.add_argument("--forward-mode", default=None, choices=["off", "padded", "cuda_graph"])
    ap.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE)
    ap.add_argument("--batch-timeout-ms", type=float, default=BATCH_TIMEOUT_MS)
    ap.add_argument("--timeout-s", type=float, default=600,
                    help="how long a request may wait in LitServe's queue (the bench's clients wait 600 s)")
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args(argv)
    server = build_server(args)

    # LitServe shuts down gracefully on Ctrl-C only; SIGTERM would kill this process and
    # leave its API and inference processes behind. Its API process is forked from this one
    # and re-raises SIGTERM once uvicorn has stopped: there it keeps its default meaning.
    main_pid = os.getpid()

    def on_term(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    server.run(host=args.host, port=args.port, log_level=args.log_level, generate_client_file=False)
    return 0


if __name__ == "__main__":
    # Run as `python -m`, this file is __main__; LitServe's spawned worker must unpickle
    # TesseraLitAPI from its importable name, so the installed module serves.
    from tessera.bench.generic import main as _main
    sys.exit(_main())
