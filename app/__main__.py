"""``python -m edgeloop.app`` / ``edgeloop app``: open the operator GUI."""

import argparse
import sys
from pathlib import Path

from edgeloop.app.window import run_app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgeloop app", description="The edgeloop operator GUI.")
    p.add_argument("--home", type=Path, default=None, help="hub home folder")
    args = p.parse_args(argv)
    return run_app(args.home)


if __name__ == "__main__":
    sys.exit(main())
