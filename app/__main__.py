"""``python -m edgeloop.app`` / ``edgeloop app``: open the operator GUI."""

import argparse
import sys
from pathlib import Path

from edgeloop.app.window import run_app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgeloop app", description="The edgeloop operator GUI.")
    p.add_argument("--home", type=Path, default=None, help="hub home folder")
    p.add_argument("--broker", default=None,
                   help="mqtt://host:port: run the hub runtime in the window while it is open "
                        "(default: [fleet] broker in <home>/hub.toml; none: only show the registry)")
    args = p.parse_args(argv)
    return run_app(args.home, args.broker)


if __name__ == "__main__":
    sys.exit(main())
