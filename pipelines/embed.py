"""Stage script: `python pipelines/embed.py [-c CONFIG] [key=value ...]` runs `dorl embed`."""

import sys

from dorl.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
