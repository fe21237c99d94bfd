"""Re-derive run folders' tables from their saved points with today's code and draw their pages: no point is
recomputed (the points' own tables are the run's measurements; what changes is what is derived from them and how it
is drawn). The manifest keeps the command and commit that computed the points and says `collected_by`.

    python scripts/rederive.py reports/long-range-lags [...]
    python scripts/rederive.py --reanalyse reports/lyrics-counting    # also the analyses, from each point's kept weights

--reanalyse: the points that kept their model (lyrics runs keep it: points/KEY.weights.parquet) have their analyses
(the context probe, input gradients, the by-frequency table) made again from those weights by today's code, no
training. A folder without its points/ (a fresh clone: git keeps no points) cannot be re-derived: rerun its command
instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gradlab.assemble import collect, reanalyse
from gradlab.folder import FolderLock, check_links, recover
from gradlab.report import draw


def main(folders: list[str]) -> int:
    again = "--reanalyse" in folders
    folders = [f for f in folders if f != "--reanalyse"]
    if not folders:
        print(__doc__)
        return 2
    for name in folders:
        out = Path(name)
        if not (out / "points").is_dir() or not (out / "plan.json").exists():
            print(f"{out}: no saved points (points/ and plan.json): rerun its command to remake it", file=sys.stderr)
            return 2
        check_links(out)
        with FolderLock(out, f"scripts/rederive.py {out}", lambda text: print(text, file=sys.stderr)):
            recover(out)
            if again:
                print(f"{out}: {reanalyse(out, print)} points reanalysed from their kept weights")
            manifest = collect(out, draw)
        print(f"{out}: {manifest.get('row_count', 0):,} rows from {len(manifest.get('points', []))} points re-derived; page drawn")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
