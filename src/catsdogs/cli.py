"""The `catsdogs` command: a thin dispatcher to the stages and tools."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from catsdogs import configure_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="catsdogs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("download", help="stage: fetch data.url into data/raw")
    commands.add_parser("split", help="stage: validate images and write data/splits manifests")
    demo = commands.add_parser("demo-data", help="write a small generated data set (stripes: cat vs dog)")
    demo.add_argument("folder", type=Path)
    demo.add_argument("--per-class", type=int, default=100)
    demo.add_argument("--layout", default="filtered")
    args = parser.parse_args(argv)

    if args.command == "download":
        from catsdogs.download import main as run
    elif args.command == "split":
        from catsdogs.split import main as run
    else:
        from catsdogs.synthetic import write_dataset

        configure_logging()
        paths = write_dataset(args.folder, per_class=args.per_class, layout=args.layout)
        print(f"wrote {len(paths)} images under {args.folder}")
        return
    run()


if __name__ == "__main__":
    sys.exit(main())
