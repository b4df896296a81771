"""`fastvit` command: dispatches to one module per sub-command.

Each sub-command lives in ``fastvit.cli.<name>`` and exposes ``add_parser(subparsers)`` and
``run(args) -> int``. Only the module of the command being run is imported (``fastvit
--help`` imports none), so ``fastvit info`` never imports torch, onnx or the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from fastvit.errors import FastViTError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("fastvit.cli.info", "list model variants with params and GMACs"),
    "list": ("fastvit.cli.list", "list architectures or (--pretrained) published weight tags"),
    "reparam": ("fastvit.cli.reparam", "reparameterize a checkpoint and verify it"),
    "train": ("fastvit.cli.train", "train or fine-tune a model"),
    "eval": ("fastvit.cli.evaluate", "evaluate a checkpoint on a dataset"),
    "export": ("fastvit.cli.export", "export a fused model (ONNX, TorchScript, CoreML)"),
    "predict": ("fastvit.cli.predict", "classify images with a checkpoint or ONNX model"),
    "bench": ("fastvit.cli.bench", "benchmark inference latency and throughput"),
}


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors exit with code 2 and a single line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def error_line(e: BaseException) -> str:
    """The one-line message of a user-facing error.

    An error raised inside a DataLoader worker reaches the main process re-created from the
    worker's formatted traceback ("Caught DataError in DataLoader worker process 0. Original
    Traceback ..."); its own message is the traceback's last line, which is what is shown.
    """
    text = str(e)
    if "Original Traceback" in text:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        text = lines[-1]
        head, sep, rest = text.partition(": ")
        if (
            sep
            and head.replace(".", "").replace("_", "").isalnum()
            and head.endswith(("Error", "Exception", "Warning"))
        ):
            text = rest
    return " ".join(text.split())


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv``: its first word that is not an option (the top-level
    options, ``--version`` and ``--help``, take no value)."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``fastvit`` parser. With ``argv``, only the sub-command it names gets its options
    (its module is imported); the others are listed by name and help line only, so
    ``fastvit --help`` and ``fastvit info`` import no command module they do not run.
    Without ``argv``, every sub-command is complete."""
    from fastvit import __version__

    parser = _Parser(prog="fastvit", description="FastViT models: train, reparameterize, deploy.")
    parser.add_argument("--version", action="version", version=f"fastvit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    wanted = None if argv is None else _command_in(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        if argv is not None and name != wanted:
            if importlib.util.find_spec(module_name) is None:  # not available in this build
                continue
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:  # command not available in this build
                continue
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_parser(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage error or --help: return the code instead of exiting
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except FastViTError as e:
        print(f"fastvit {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastvit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fastvit info | head`: the reader left; no traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no flush error at exit)
        return 141


if __name__ == "__main__":
    sys.exit(main())
