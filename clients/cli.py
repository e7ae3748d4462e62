"""The `tessera` command: serve, generate, bench, train, evaluate.

    tessera serve                          # the bundled model on 127.0.0.1:50051
    tessera generate "a red circle" -n 4   # from a second terminal
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

USAGE = """usage: tessera COMMAND [ARGS]

commands:
  serve      serve text-to-image over gRPC (tessera serve --help)
  generate   generate images from a prompt through a running server
  bench      measure throughput and latency
  reliability  soak, burst, SIGTERM, fuzz and auth checks against servers it starts
  train      train the DALL·E models from scratch
  evaluate   measure a model directory against the pixel checker
"""


class ProgressBar:
    """One line on stderr, redrawn in place; quiet when stderr is not a terminal."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream, self.width = stream, width
        self.live = stream.isatty()
        self.started = time.monotonic()

    def update(self, stage: str, completed: int, total: int) -> None:
        if not self.live or total <= 0:
            return
        filled = int(self.width * completed / total)
        elapsed = time.monotonic() - self.started
        self.stream.write(f"\r{stage:>10} [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{completed}/{total} {elapsed:5.1f}s")
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


def _token(args) -> str | None:
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    if args.token_env:
        return os.environ.get(args.token_env, "").strip() or None
    return None


def generate(argv: list[str]) -> int:
    from tessera.clients.client import Generation, TesseraClient, TesseraError
    from tessera.clients.sheet import contact_sheet

    ap = argparse.ArgumentParser(prog="tessera generate", description="Generate images from a prompt.")
    ap.add_argument("prompt")
    ap.add_argument("-n", "--num-images", type=int, default=1)
    ap.add_argument("--candidates", type=int, default=0, help="sampled then reranked (default: -n)")
    ap.add_argument("--seed", type=int, default=0, help="0: the server picks")
    ap.add_argument("--temperature", type=float, default=0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=0)
    ap.add_argument("--guidance-scale", type=float, default=0)
    ap.add_argument("-o", "--out", default="tessera-out", help="directory for the PNGs")
    ap.add_argument("--server", default=os.environ.get("TESSERA_SERVER", "127.0.0.1:50051"))
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--token-file")
    ap.add_argument("--token-env", help="environment variable holding the bearer token")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--ca-file", help="root certificates for TLS")
    args = ap.parse_args(argv)
    bar = ProgressBar()
    result = None
    try:
        with TesseraClient(args.server, token=_token(args), tls=args.tls, root_certificates=args.ca_file,
                           retries=2) as client:
            for event in client.generate_stream(
                    args.prompt, timeout=args.timeout, num_images=args.num_images,
                    num_candidates=args.candidates, seed=args.seed, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, guidance_scale=args.guidance_scale):
                if isinstance(event, Generation):
                    result = event
                else:
                    bar.update(event.stage, event.completed, event.total)
    except TesseraError as exc:
        bar.close()
        if exc.code.name == "UNAVAILABLE":
            print(f"tessera generate: cannot reach the server at {args.server} ({exc.details}). "
                  "Is `tessera serve` running there?", file=sys.stderr)
        else:
            print(f"tessera generate: the server refused the request: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tessera generate: {exc}", file=sys.stderr)
        return 1
    bar.close()
    if result.unknown_words:
        print(f"tessera generate: the model does not know {', '.join(map(repr, result.unknown_words))}; "
              "the images ignore them (the server's GetInfo lists the words it knows)", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, im in enumerate(result.images):
        path = out / f"{result.request_id[:8]}_{rank:02d}_seed{im.seed}.png"
        path.write_bytes(im.png)
        paths.append(path)
        print(f"{path}  clip_score={im.clip_score:.3f} seed={im.seed}")
    sheet = out / f"{result.request_id[:8]}_contact_sheet.png"
    contact_sheet([[im.image for im in result.images]], [args.prompt if args.prompt.isascii() else ""]).save(sheet)
    stages = ", ".join(f"{t.stage} {t.queue_ms:.0f}+{t.compute_ms:.0f} ms" for t in result.timings)
    print(f"wrote {len(paths)} image(s) and {sheet} in {result.total_ms:.0f} ms ({stages})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "serve":
        from tessera.server.main import main as serve
        return serve(rest)
    if command == "generate":
        return generate(rest)
    if command == "bench":
        from tessera.clients.bench import main as bench
        return bench(rest)
    if command == "reliability":
        from tessera.clients.reliability import main as reliability
        return reliability(rest)
    if command == "train":
        from tessera.ops.training.train import main as train
        return train(rest)
    if command == "evaluate":
        from tessera.ops.training.evaluate import main as evaluate
        return evaluate(rest)
    print(f"tessera: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
