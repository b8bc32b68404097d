"""Reference-object lab: Janus per prior mode, measured exactly (face arcs, back-half fraction).

    python benchmarks/janus_lab.py [--seeds 0,1,2] [--out lab.json] [key=value ...]
    python launch.py --bench lab [--seeds 0,1,2] [--out lab.json] [key=value ...]   (the same)

``key=value`` overrides :class:`threestudio_like.janus.lab.LabConfig` (guidance_scale=7.5,
kappa=2, steps=300, ...). Prints a Markdown table with Wilson 95% intervals.
"""
from __future__ import annotations

import sys

from threestudio_like.janus.lab import lab_main

if __name__ == "__main__":
    sys.exit(lab_main(prog="benchmarks/janus_lab.py"))
