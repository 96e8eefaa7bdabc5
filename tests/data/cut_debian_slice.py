"""Cut the small Debian-sections slice the text tests read (tests/data/debian-sections/).

The tests need four sections and a few rows of each, so the repository carries only those rows,
copied in file order from the full set (../shared/data/debian-sections/, 12 MB) and never edited:
train 50 rows per section, validation and test 8. Run: python tests/data/cut_debian_slice.py SRC_DIR
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

LABELS = ["admin", "devel", "libs", "net"]
ROWS = {"train": 50, "validation": 8, "test": 8}


def main(src: Path, dst: Path = Path(__file__).resolve().parent / "debian-sections") -> None:
    dst.mkdir(exist_ok=True)
    for split, n in ROWS.items():
        taken = {name: 0 for name in LABELS}
        with open(src / f"{split}.csv", newline="") as fh, open(dst / f"{split}.csv", "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=["text", "label"])
            writer.writeheader()
            for row in csv.DictReader(fh):
                if row["label"] in taken and taken[row["label"]] < n:
                    taken[row["label"]] += 1
                    writer.writerow({"text": row["text"], "label": row["label"]})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
