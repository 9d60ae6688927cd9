"""Stage script: `python pipelines/classify.py [-c CONFIG] [key=value ...]` runs `dorl classify`."""

import sys

from dorl.cli import main

if __name__ == "__main__":
    sys.exit(main(["classify", "run", *sys.argv[1:]]))
