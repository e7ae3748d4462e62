"""`tessera-client`: generate images through a running server, or ask what it serves.

    tessera-client generate "a red circle" -n 4 --seed 7 -o out   # the server at $TESSERA_SERVER or 127.0.0.1:50051
    tessera-client info                     # the models it serves, and the first one's size, limits, words
    tessera-client generate "a red circle" --model mini   # a server of several models: name one

Beside the server, `tessera generate` and `tessera info` are these same commands
(tessera.server.cli). Every command's arguments come from its own module's
`add_arguments`, so `--help` is argparse's and cannot drift from the code.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Command:
    """A subcommand: the module with its `add_arguments(parser)` and `run(args) -> int`."""
    name: str
    module: str
    help: str


COMMANDS = (
    Command("generate", "tessera.clients.cli", "generate images from a prompt through a running server"),
    Command("info", "tessera.clients.cli", "what the server serves: its models, and one's image size, limits, defaults"),
)


def build_parser(prog: str, description: str, commands: tuple[Command, ...], chosen: str | None) -> argparse.ArgumentParser:
    """A parser with one subcommand per entry; only the chosen one's module is imported
    (so `tessera generate` never loads torch for `tessera train`'s arguments)."""
    ap = argparse.ArgumentParser(prog=prog, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in commands:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if cmd.name != chosen:
            continue
        module = importlib.import_module(cmd.module)
        if hasattr(module, "add_arguments"):  # a module of one command: its docstring describes it
            p.description = module.__doc__ or cmd.help
            module.add_arguments(p)
            p.set_defaults(run=module.run, prog=p.prog, parser=p)
        else:  # a module of several: add_<name>_arguments and run_<name>
            getattr(module, f"add_{cmd.name}_arguments")(p)
            p.set_defaults(run=getattr(module, f"run_{cmd.name}"), prog=p.prog, parser=p)
    return ap


# What a shell reports for a command a closed pipe stopped (128 + SIGPIPE): `tessera info | head`.
EXIT_BROKEN_PIPE = 141


def dispatch(prog: str, description: str, commands: tuple[Command, ...], argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((c.name for c in commands if argv and argv[0] == c.name), None)
    try:
        ap = build_parser(prog, description, commands, chosen)
        args, unknown = ap.parse_known_args(argv)
        if unknown:  # argparse would report these with the top-level usage; the command's own is the useful one
            getattr(args, "parser", ap).error(f"unrecognized arguments: {' '.join(unknown)}")
        code = args.run(args)
        sys.stdout.flush()  # here, where a closed pipe can still be caught, not at exit
        return code
    except BrokenPipeError:
        # The reader left (`| head`): no traceback. Python's own advice (the signal module's
        # note on SIGPIPE): point stdout at devnull so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _model_argument(ap: argparse.ArgumentParser, what: str) -> None:
    ap.add_argument("--model", default="", metavar="NAME",
                    help=f"{what} (default: the server's first model; `tessera info` lists them)")


def _connection_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--server", default=os.environ.get("TESSERA_SERVER", "127.0.0.1:50051"),
                    help="HOST:PORT of the server (default: $TESSERA_SERVER or 127.0.0.1:50051)")
    ap.add_argument("--token-file", help="a file holding the bearer token")
    ap.add_argument("--token-env", help="environment variable holding the bearer token")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--ca-file", help="root certificates for TLS")


def _token(args) -> str | None:
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    if args.token_env:
        return os.environ.get(args.token_env, "").strip() or None
    return None


def _client(args):
    from tessera.clients.client import TesseraClient
    return TesseraClient(args.server, token=_token(args), tls=args.tls, root_certificates=args.ca_file, retries=2)


def _refused(prog: str, server: str, exc) -> int:
    if exc.code.name == "UNAVAILABLE" and "shutting down" in exc.details:  # it answered: reachable, but draining
        print(f"{prog}: the server at {server} is shutting down and admits no new requests; "
              "try again once it has restarted", file=sys.stderr)
    elif exc.code.name == "UNAVAILABLE":
        print(f"{prog}: cannot reach the server at {server} ({exc.details}). "
              "Is `tessera serve` running there?", file=sys.stderr)
    else:
        print(f"{prog}: the server refused the request: {exc}", file=sys.stderr)
    return 1


def _unsigned(bits: int):
    """An argparse type for a proto uint field: refused here, naming the flag, rather than by
    protobuf as a bare `Value out of range`."""
    top = 2**bits - 1

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not 0 <= value <= top:
            raise argparse.ArgumentTypeError(f"{text} is out of range: 0 to {top}")
        return value
    parse.__name__ = f"uint{bits}"
    return parse


DEFAULT_OUT = "tessera-out"


def add_generate_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("prompt", help="English or Chinese")
    ap.add_argument("-n", "--num-images", type=_unsigned(32), default=1,
                    help="images returned, best CLIP score first (0: the server's default, 1)")
    ap.add_argument("--candidates", type=_unsigned(32), default=0, help="sampled then reranked (default: -n)")
    ap.add_argument("--seed", type=_unsigned(64), default=0,
                    help="0 to 2^64-1; 0: the server picks; the same seed gives the same images")
    ap.add_argument("--temperature", type=float, default=0, help="0: the model's default")
    ap.add_argument("--top-k", type=_unsigned(32), default=0, help="0: the model's default")
    ap.add_argument("--top-p", type=float, default=0, help="0: the model's default")
    ap.add_argument("--guidance-scale", type=float, default=0, help="0: the model's default")
    ap.add_argument("-o", "--out", default=DEFAULT_OUT, metavar="DIR",
                    help=f"directory for the PNGs and the contact sheet, made if missing "
                         f"(default: ./{DEFAULT_OUT}/ in the current directory)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds")
    ap.add_argument("--priority", type=int, default=0,
                    help="lower is served sooner (default 0); the server's graph.priority_range bounds it, "
                         "and a request waiting long enough is served whatever its priority")
    _model_argument(ap, "which of the server's models draws the images")
    _connection_arguments(ap)


def _progress():
    """rich's progress bars on stderr, one per stage, fed by the stream; quiet when stderr is no terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not console.is_terminal)


def run_generate(args: argparse.Namespace) -> int:
    prog = args.prog
    from tessera.clients.client import Generation, TesseraError
    from tessera.clients.sheet import contact_sheet

    result = None
    try:
        with _client(args) as client, _progress() as progress:
            tasks: dict[str, int] = {}
            for event in client.generate_stream(
                    args.prompt, model=args.model, timeout=args.timeout, num_images=args.num_images,
                    num_candidates=args.candidates, seed=args.seed, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, guidance_scale=args.guidance_scale, priority=args.priority):
                if isinstance(event, Generation):
                    result = event
                elif event.total > 0:
                    if event.stage not in tasks:
                        tasks[event.stage] = progress.add_task(event.stage, total=event.total)
                    progress.update(tasks[event.stage], completed=event.completed, total=event.total)
    except TesseraError as exc:
        return _refused(prog, args.server, exc)
    except (OSError, ValueError) as exc:  # an unreadable token file, a token gRPC cannot carry
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    if result.unknown_words:
        print(f"{prog}: the model does not know {', '.join(map(repr, result.unknown_words))}; "
              "the images ignore them (`tessera info` lists the words it knows)", file=sys.stderr)
    for note in result.notes:
        print(f"{prog}: {note}", file=sys.stderr)
    if not result.reranked:
        print(f"{prog}: the server has no reranker: the images are the first candidates in sampling order, "
              "unscored", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, im in enumerate(result.images):
        path = out / f"{result.request_id[:8]}_{rank:02d}_seed{im.seed}.png"
        path.write_bytes(im.png)
        paths.append(path)
        print(f"{path}  clip_score={im.clip_score:.3f} seed={im.seed}")
    sheet = out / f"{result.request_id[:8]}_contact_sheet.png"
    contact_sheet([[im.image for im in result.images]], [args.prompt]).save(sheet)
    stages = ", ".join(f"{t.stage} {t.queue_ms:.0f}+{t.compute_ms:.0f} ms" for t in result.timings)
    print(f"wrote {len(paths)} image(s) and {sheet} in {result.total_ms:.0f} ms ({stages})")
    return 0


def add_info_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--timeout", type=float, default=10, help="seconds")
    _model_argument(ap, "the model to describe")
    _connection_arguments(ap)


def _served(models) -> str:
    """The models line: each name with its version, family and state; the first is the default."""
    def one(m) -> str:
        what = ", ".join(x for x in (f"version {m.version}" if m.version else "", m.model_kind,
                                     "" if m.state in ("", "serving") else m.state) if x)
        return f"{m.name} ({what})" if what else m.name
    line = "; ".join(one(m) for m in models)
    return line + ("; the first serves requests that name none" if len(models) > 1 else "")


def run_info(args: argparse.Namespace) -> int:
    prog = args.prog
    from tessera.clients.client import TesseraError
    try:
        with _client(args) as client:
            models = client.list_models(timeout=args.timeout)
            info = client.info(model=args.model, timeout=args.timeout)
    except TesseraError as exc:
        return _refused(prog, args.server, exc)
    except (OSError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    if any(m.name for m in models):
        print(f"models     {_served(models)}")
    elif args.model:  # a server older than ListModels: one model, whatever a request names
        print(f"{prog}: the server at {args.server} does not name its models; it serves one, described here, "
              "to every request", file=sys.stderr)
    # Only what the server says it serves: a pipeline of one's own OPs may have no model at all.
    print(f"model      {info.model_name} ({info.model_kind or 'the graph serves no model'}) {info.version}".rstrip())
    if info.image_width:
        tokens = f", {info.image_tokens} image tokens" if info.image_tokens else ""
        print(f"images     {info.image_width} x {info.image_height}{tokens}")
    if info.text_context:
        print(f"prompt     up to {info.text_context} tokens" + (f", {info.tokenizer}" if info.tokenizer else ""))
    elif info.tokenizer:
        print(f"prompt     read as {info.tokenizer}")
    if info.model_kind:
        print(f"rerank     {info.reranker if info.rerank else 'off: images come back in sampling order'}")
    if info.precision:
        print("precision  " + ", ".join(f"{op} {dtype}" for op, dtype in info.precision.items()))
    if info.details:
        print("details    " + ", ".join(f"{k} {v}" for k, v in sorted(info.details.items())))
    print("limits     " + ", ".join(f"{k} {v}" for k, v in info.limits.items()))
    print("defaults   " + ", ".join(f"{k} {v:g}" for k, v in info.defaults.items()))
    if not any(info.vocabulary.values()) and info.text_context:  # an open (BPE) vocabulary lists no words
        print("vocabulary open: any text the tokenizer takes")
    for kind, words in info.vocabulary.items():  # what the model can draw, English / Chinese
        if words:
            print(f"{kind:<10} " + ", ".join(f"{en} / {zh}" if zh else en for en, zh in words))
    return 0


def main(argv: list[str] | None = None) -> int:
    return dispatch("tessera-client", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
