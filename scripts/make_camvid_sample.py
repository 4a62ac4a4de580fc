"""Copy an evenly spread, credited subset of CamVid into examples/ (run once by maintainers).

python scripts/make_camvid_sample.py --src ../shared/data/camvid --out examples/camvid-sample
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", type=Path, required=True, help="CamVid root in the SegNet layout")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--val", type=int, default=8)
    args = parser.parse_args()
    for split, n in (("train", args.train), ("val", args.val)):
        names = sorted(p.name for p in (args.src / split).glob("*.png"))
        step = len(names) / n
        for name in (names[int(i * step)] for i in range(n)):
            for sub in (split, f"{split}annot"):
                (args.out / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy2(args.src / sub / name, args.out / sub / name)
    print(f"wrote {args.train} train and {args.val} val pairs to {args.out}")


if __name__ == "__main__":
    main()
