"""Command line for the datasets (also installed as `draw-datasets`).

    python -m draw.datasets list                         # what is present, where, how big
    python -m draw.datasets download bmnist              # download, verify, convert
    python -m draw.datasets convert bmnist --from DIR    # convert files you already have

Errors are one line on stderr, `error: ...`, with exit status 1 (2 for a malformed command line,
130 for Ctrl-C); nothing half-written is left in the data directory.
"""
import argparse
import sys

from draw.datasets.errors import DatasetError
from draw.datasets.registry import supported_datasets
from draw.datasets.store import convert, data_root, download_dataset, status


class _Parser(argparse.ArgumentParser):
    """argparse, but a malformed command line is one line of error, not usage plus error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=str, default=None,
                        help="data directory (default: $DRAW_DATA_PATH, else $FUEL_DATA_PATH, "
                             "else the per-user cache directory, ~/.cache/draw on Linux)")
    names = ", ".join(supported_datasets)
    parser = _Parser(prog="python -m draw.datasets",
                     description="Download, convert and list the datasets DRAW trains on.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    commands.add_parser("list", parents=[common], help="show each dataset's state, path, size")
    download = commands.add_parser("download", parents=[common],
                                   help="download the original files, verify and convert them")
    download.add_argument("name", type=str, help=f"dataset: {names}")
    download.add_argument("--timeout", type=float, default=60.0,
                          help="seconds to wait for a server before trying the next mirror")
    conv = commands.add_parser("convert", parents=[common],
                               help="verify and convert original files into the data directory")
    conv.add_argument("name", type=str, help=f"dataset: {names}")
    conv.add_argument("--from", dest="source", type=str, default=None,
                      help="directory holding the original files, as published or gzipped "
                           "(.gz); default: where `download` puts them, <root>/raw/NAME")
    return parser


def print_status(root: str | None) -> None:
    """Print the data directory, one line per dataset, then how each one's splits are made."""
    print(f"data directory: {data_root(root)}")
    rows = status(root)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            print_status(args.root)
        elif args.command == "download":
            download_dataset(args.name, args.root, timeout=args.timeout)
        else:
            convert(args.name, args.source, args.root)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
