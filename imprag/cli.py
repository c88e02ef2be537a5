"""The `imprag` command: one subcommand per module in imprag/commands, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from imprag.config_io import add_config_flags, dump_yaml, flag_overrides, load_config
from imprag.errors import UserError

# name -> (module under imprag.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pull": ("pull", "fetch real weights (SmolLM2-135M) as a Hugging Face folder"),
    "calibrate": ("calibrate", "compute a model's retrieval calibration means from a passages file"),
    "index": ("index", "embed a JSONL corpus with the bottom layers and build a FAISS index"),
    "search": ("search", "show the passages the model's implicit query retrieves"),
    "mine": ("mine", "mine pseudo-label candidates with BM25 or a dense retriever"),
    "train": ("train", "train retrieval (warmup + self-distillation) and generation"),
    "eval": ("eval", "evaluate a method on a task; writes predictions, metrics and a table"),
    "score": ("score", "score any KILT-format prediction file against gold"),
    "report": ("report", "combine eval runs into a Table-2-shaped markdown table and chart"),
    "ask": ("ask", "answer a prompt with implicitly retrieved passages"),
    "serve": ("serve", "OpenAI-compatible HTTP server with retrieval"),
    "world": ("world", "generate a synthetic knowledge world (passages + tasks)"),
    "demo": ("demo", "the end-to-end miniature of the paper's experiment"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"  {n.ljust(width)}  {h}" for n, (_, h) in COMMANDS.items()]
    return (
        "usage: imprag COMMAND [options]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\n`imprag COMMAND --help` for options."
    )


def _one_line_error(prog: str):
    """argparse's errors (missing or unknown flags, bad values) as one line instead of usage + error."""

    def error(message: str):
        print(f"{prog}: error: {message} (`{prog} --help` lists the flags)", file=sys.stderr)
        raise SystemExit(2)

    return error


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"imprag: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"imprag.commands.{COMMANDS[name][0]}")
    parser = argparse.ArgumentParser(prog=f"imprag {name}", description=COMMANDS[name][1])
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="YAML file of these options (as --print-config prints them)"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved options as YAML and exit"
    )
    add_config_flags(parser, module.Options)  # the command's typed Options are its flags
    parser.error = _one_line_error(parser.prog)  # type: ignore[method-assign]
    try:
        args = parser.parse_args(rest)
        options = load_config(module.Options, args.config, flag_overrides(args))
        if args.print_config:
            print(dump_yaml(options), end="")
            return 0
        return int(module.run(options) or 0)
    except UserError as e:
        print(f"imprag {name}: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # Python's, the CPU allocator's or CUDA's out-of-memory
        text = str(e) or "out of memory"
        if isinstance(e, RuntimeError) and not any(
            m in text.lower() for m in ("out of memory", "not enough memory")
        ):
            raise
        first = text.splitlines()[0].split(". ")[0]
        print(f"imprag {name}: error: {first}; lower --batch-size (or free the GPU)", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(
            f"imprag {name}: interrupted; finished work is kept, run the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
