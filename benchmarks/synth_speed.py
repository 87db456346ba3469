"""How fast the synthetic generator writes a dataset (target: 100 S4 videos at 224 px in < 30 s on 2 cores).

    python benchmarks/synth_speed.py                      # 100 S4 videos, 224 px, 1 process
    python benchmarks/synth_speed.py --layout avss --workers 2 --num-videos 50

Writes into a temporary folder that is removed afterwards, and prints one table row per run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from avseg.data.synthetic import generate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="s4", choices=["s4", "ms3", "avss"])
    parser.add_argument("--num-videos", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="one run per value")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(f"{'layout':<7}{'videos':>7}{'size':>6}{'workers':>8}{'seconds':>9}{'videos/s':>10}{'MB':>7}")
    for workers in args.workers:
        tmp = Path(tempfile.mkdtemp(prefix="avseg_synth_speed_"))
        try:
            start = time.perf_counter()
            generate(
                args.layout, tmp / args.layout, num_videos=args.num_videos, seed=args.seed, size=args.size,
                workers=workers,
            )
            seconds = time.perf_counter() - start
            megabytes = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) / 1e6
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(
            f"{args.layout:<7}{args.num_videos:>7}{args.size:>6}{workers:>8}{seconds:>9.2f}"
            f"{args.num_videos / seconds:>10.1f}{megabytes:>7.1f}"
        )


if __name__ == "__main__":
    main()
