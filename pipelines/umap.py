"""Stage script: `python pipelines/umap.py [-c CONFIG] [key=value ...]` runs `dorl umap`."""

import sys

from dorl.cli import main

if __name__ == "__main__":
    sys.exit(main(["umap", *sys.argv[1:]]))
