"""`stentor <verb>`: a thin command line over the library.

Each capability package owns a `cli.py` with `register(subparsers)`; this module only
collects them, parses, and turns a `StentorError` into one line on stderr.
Handlers import their heavy dependencies (torch, transformers) lazily so `--help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from stentor import __version__
from stentor.errors import StentorError

# One entry per capability package; each module defines register(subparsers).
COMMAND_MODULES = [
    "stentor.model.cli",
    "stentor.data.cli",
    "stentor.train.cli",
    "stentor.tokenizer.cli",
    "stentor.infer.cli",
    "stentor.export.cli",
    "stentor.quickstart.cli",
    "stentor.eval.cli",
    "stentor.publish.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stentor",
        description=(
            "Train, evaluate, run, quantize, export and serve Stentor2-class tiny language models.\n"
            "Run `stentor <command> --help` for the options of one command."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stentor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # the HTTP clients log every request at INFO: noise around one command's output
        for name in ("httpx", "httpx2", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except StentorError as exc:
        print(f"stentor: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `stentor ... | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("stentor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
