#!/usr/bin/env python
"""Entry point: ``python launch.py --config demo.yaml --train`` (see ``--help``)."""
import sys

from threestudio_like.cli import main

if __name__ == "__main__":
    sys.exit(main())
