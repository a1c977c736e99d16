"""Command line for the datasets (also installed as `draw-datasets`).

    python -m draw.datasets list                         # what is present, where, how big
    python -m draw.datasets download bmnist              # download, verify, convert
    python -m draw.datasets convert bmnist --from DIR    # convert files you already have

`--data-dir DIR` (or its older spelling `--root DIR`) chooses the data directory. Errors are one
line on stderr, `error: ...`, with exit status 1 (2 for a malformed command line, 130 for
Ctrl-C), through draw/cli.py as in every script; nothing half-written is left in the data
directory.
"""
import argparse
import sys

from draw.cli import ArgumentParser, run
from draw.datasets.registry import REGISTRY
from draw.datasets.store import convert, data_root, download_dataset, status


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", "--root", dest="data_dir", type=str, default=None,
                        help="data directory (default: $DRAW_DATA_PATH, else $FUEL_DATA_PATH, "
                             "else the per-user cache directory, ~/.cache/draw on Linux); "
                             "--root is the older name")
    names = ", ".join(n for n, spec in REGISTRY.items() if not spec.shipped)
    parser = ArgumentParser(prog="python -m draw.datasets",
                            description="Download, convert and list the datasets DRAW trains on.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=ArgumentParser)
    commands.add_parser("list", parents=[common], help="show each dataset's state, path, size")
    download = commands.add_parser("download", parents=[common],
                                   help="download the original files, verify and convert them")
    download.add_argument("name", type=str, help=f"dataset: {names}")
    download.add_argument("--timeout", type=_positive_seconds, default=5.0,
                          help="seconds to wait for a server to connect, answer or send the "
                               "next bytes before trying the next mirror (default 5)")
    conv = commands.add_parser("convert", parents=[common],
                               help="verify and convert original files into the data directory")
    conv.add_argument("name", type=str, help=f"dataset: {names}")
    conv.add_argument("--from", dest="source", type=str, default=None,
                      help="directory holding the original files, as published or gzipped "
                           "(.gz); default: where `download` puts them, <data-dir>/raw/NAME")
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def print_status(data_dir: str | None) -> None:
    """Print the data directory, one line per dataset, then how each one's splits are made."""
    print(f"data directory: {data_root(data_dir)}")
    rows = status(data_dir)
    widths = {key: max(len(key), *(len(str(r[key])) for r in rows))
              for key in ("name", "state", "size", "shape")}
    header = "  ".join(key.upper().ljust(w) for key, w in widths.items()) + "  PATH"
    print(header)
    for r in rows:
        path = r["path"] if r["state"] != "missing" else f"run: draw-datasets download {r['name']}"
        print("  ".join(str(r[key]).ljust(w) for key, w in widths.items()) + f"  {path}")
    print("\ntrain / valid / test:")
    for r in rows:
        print(f"  {r['name'].ljust(widths['name'])}  {r['splits']}")


def command(command: str, data_dir: str | None, name: str | None = None,
            timeout: float = 5.0, source: str | None = None) -> None:
    """Run one parsed command (the `main(**vars(args))` hand-off of draw/cli.py)."""
    if command == "list":
        print_status(data_dir)
    elif command == "download":
        download_dataset(name, data_dir, timeout=timeout)
    else:
        convert(name, source, data_dir)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m draw.datasets` and `draw-datasets`: the exit status (see the
    module docstring)."""
    args = build_parser().parse_args(argv)
    try:
        run(command, args)
    except SystemExit as e:
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
