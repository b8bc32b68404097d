"""Reference-object lab: Janus per prior mode, measured exactly (face arcs, back-half fraction).

    python benchmarks/janus_lab.py [--seeds 0,1,2] [--out lab.json] [key=value ...]

``key=value`` overrides :class:`threestudio_like.janus.lab.LabConfig` (guidance_scale=7.5,
kappa=2, steps=300, ...). Prints a Markdown table with Wilson 95% intervals.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from threestudio_like.janus.lab import lab_markdown, run_lab_benchmark


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=None, help="write the full result as JSON")
    parser.add_argument("overrides", nargs="*", help="LabConfig key=value")
    args = parser.parse_args(argv)
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.from_dotlist(args.overrides)) if args.overrides else {}
    torch.set_num_threads(1)
    start = time.time()
    result = run_lab_benchmark([int(s) for s in args.seeds.split(",")], cfg)
    print(lab_markdown(result))
    print(f"({len(result['runs'])} runs in {time.time() - start:.1f} s)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
