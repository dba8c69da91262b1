"""Command-line entry points: ``hf-dtokd <command>``, ``hf-dtokd-classify``, ``hf-dtokd-detect``,
``hf-dtokd-segment``, ``hf-dtokd-demo``."""

from __future__ import annotations

import sys

COMMANDS = {
    "classify": ("hf_dtokd.cli.classify", "distil an image classifier (the example script)"),
    "detect": ("hf_dtokd.cli.detect", "distil an object detector (the example script)"),
    "segment": ("hf_dtokd.cli.segment", "distil a semantic-segmentation model (the example script)"),
    "demo": ("hf_dtokd.demos.digits", "the embedded digits distillation (no download)"),
    "detect-demo": ("hf_dtokd.demos.shapes", "the embedded shapes detection distillation (no download)"),
    "segment-demo": (
        "hf_dtokd.demos.segmentation",
        "the embedded shapes segmentation distillation (no download)",
    ),
}


def main(argv: list[str] | None = None) -> None:
    """``hf-dtokd <command> [flags]``: dispatch to a command's own parser (``--help`` on each)."""
    import importlib

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        lines = [
            "usage: hf-dtokd <command> [flags]   (hf-dtokd <command> --help for its flags)",
            "",
            "commands:",
        ]
        lines += [f"  {name:<13} {text}" for name, (_, text) in COMMANDS.items()]
        print("\n".join(lines))
        if not argv:
            raise SystemExit(2)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise SystemExit(f"hf-dtokd: unknown command {command!r}; valid commands: {', '.join(COMMANDS)}")
    importlib.import_module(COMMANDS[command][0]).main(rest)


def detect() -> None:
    from hf_dtokd.cli.detect import main as run

    run()


def segment() -> None:
    from hf_dtokd.cli.segment import main as run

    run()


def classify() -> None:
    from hf_dtokd.cli.classify import main as run

    run()


if __name__ == "__main__":
    main()
