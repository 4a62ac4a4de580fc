"""Does a bank built by older code still open and retrieve identically? Record, then compare.

Run ``record`` with the old code (a checkout of the older commit on ``PYTHONPATH``) and again with
the new, on the same banks, then ``compare`` the two files::

    git worktree add /tmp/old e9137e4
    .venv/bin/sims index build -d camvid -r DATA -o /tmp/v1-val --splits val      # with the old code:
    PYTHONPATH=/tmp/old .venv/bin/python -m sims.cli index build ...               # (both banks)
    PYTHONPATH=/tmp/old .venv/bin/python benchmarks/bank_compat.py record --bank /tmp/v1-val \
        --bank /tmp/v1-train --layouts /tmp/v1-val --out /tmp/before.json
    .venv/bin/python benchmarks/bank_compat.py record ... --out /tmp/after.json
    .venv/bin/python benchmarks/bank_compat.py compare /tmp/before.json /tmp/after.json \
        --json benchmarks/results/bank_compat.json

Every layout of ``--layouts`` (a bank's label maps) is retrieved in ``exact``, ``fast`` (several
candidate counts) and ``full`` modes; the matches, scores, IoUs, statuses and the count of scored
segments are recorded. On a bank's own layouts, the layout's image is excluded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from memory_bank import open_bank
from retrieval_service.engine import RetrievalEngine

try:  # where the options type lives: retrieval_service.types since issue 13, the engine before
    from retrieval_service.types import RetrievalOptions
except ImportError:  # pragma: no cover - older code
    from retrieval_service.engine import RetrievalOptions  # type: ignore[no-redef]

#: (mode, k, candidates) of each recorded run.
RUNS = (
    ("exact", 1, 512),
    ("exact", 5, 512),
    ("fast", 1, 512),
    ("fast", 5, 512),
    ("fast", 5, 64),
    ("fast", 20, 8),
    ("full", 5, 512),
)


def record(banks: list[Path], layouts_bank: Path, out: Path) -> None:
    """Retrieve every layout of ``layouts_bank`` from each bank, in every run of :data:`RUNS`; write JSON."""
    source = open_bank(layouts_bank)
    layouts = [np.asarray(source.labels[i]) for i in range(source.num_images)]
    results: dict[str, object] = {}
    for path in banks:
        bank = open_bank(path)
        start = time.perf_counter()
        engine = RetrievalEngine.from_bank(bank)
        engine.warm_up()
        results[f"{path.name}/startup_s"] = round(time.perf_counter() - start, 3)
        own = path.resolve() == layouts_bank.resolve()
        for mode, k, candidates in RUNS:
            rows = []
            for i, layout in enumerate(layouts):
                options = RetrievalOptions(k=k, mode=mode, candidates=candidates, exclude_images=(i,) if own else ())
                r = engine.retrieve(layout, options)
                rows.append(
                    [r.scored]
                    + [
                        [c.status.value]
                        + [[m.segment_id, m.image_id, m.score, m.mask_iou, m.context_iou] for m in c.matches]
                        for c in r.components
                    ]
                )
            results[f"{path.name}/{mode}/k{k}/c{candidates}"] = rows
            print(f"{path.name} {mode} k={k} candidates={candidates}: {len(rows)} layouts", flush=True)
    out.write_text(json.dumps(results))


def compare(before: Path, after: Path, out: Path | None) -> int:
    """Compare two recordings run by run; exit 1 if any retrieval differs."""
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    runs = sorted(k for k in a if not k.endswith("startup_s"))
    differ = [k for k in runs if a[k] != b.get(k)]
    layouts = sum(len(a[k]) for k in runs)
    summary = {
        "runs": len(runs),
        "layout_results": layouts,
        "runs_that_differ": differ,
        "identical": not differ,
        "startup_s": {k: [a[k], b.get(k)] for k in a if k.endswith("startup_s")},
        "compared": "segment and image ids, scores, mask and context IoUs, statuses, scored counts",
    }
    print(json.dumps(summary, indent=2))
    if out is not None:
        out.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="Record retrievals on banks.")
    rec.add_argument("--bank", type=Path, action="append", required=True)
    rec.add_argument("--layouts", type=Path, required=True, help="Bank whose label maps are the queries.")
    rec.add_argument("--out", type=Path, required=True)
    cmp = sub.add_parser("compare", help="Compare two recordings.")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    cmp.add_argument("--json", type=Path, default=None, help="Write the summary here.")
    args = parser.parse_args()
    if args.command == "record":
        record(args.bank, args.layouts, args.out)
        return 0
    return compare(args.before, args.after, args.json)


if __name__ == "__main__":
    sys.exit(main())
