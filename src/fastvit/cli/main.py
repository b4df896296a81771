"""`fastvit` command: dispatches to one module per sub-command.

Each sub-command lives in ``fastvit.cli.<name>`` and exposes ``add_parser(subparsers)`` and
``run(args) -> int``. Modules are imported lazily so ``fastvit info`` never imports onnx or
the training stack.
"""

from __future__ import annotations

import argparse
import importlib
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


def build_parser() -> argparse.ArgumentParser:
    from fastvit import __version__

    parser = _Parser(prog="fastvit", description="FastViT models: train, reparameterize, deploy.")
    parser.add_argument("--version", action="version", version=f"fastvit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
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
    parser = build_parser()
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


if __name__ == "__main__":
    sys.exit(main())
