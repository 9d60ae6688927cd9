"""Run the dorl command line as ``python -m dorl``."""

from dorl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
