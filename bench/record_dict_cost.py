"""Issue 12: what the session directory spends per commit turning a SessionRecord into
the dict the session log stores: SessionRecord.to_dict (lists copied) against
dataclasses.asdict (its walk over every token id, what to_dict was), side by side in
one run, for windows of 0 to 2,044 token ids. CPU microseconds per record, median of
``--repeats`` timings of ``--number`` calls each.

    python bench/record_dict_cost.py --json bench/results/record_dict_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import header, save_plot  # noqa: E402
from swiftinfer_core.protocol import SessionRecord  # noqa: E402

WINDOWS = (0, 124, 508, 1020, 2044)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, default=Path("bench/results/record_dict_cost.json"))
    a = ap.parse_args()
    out = {**header(), "unit": "microseconds per record", "results": {}}
    for w in WINDOWS:
        r = SessionRecord("session", list(range(4)), list(range(w)), list(range(24)), 10 * w, 12,
                          extra={"tool_state": {"calls": [1, 2]}})
        assert r.to_dict() == asdict(r)
        row = {}
        for name, fn in (("to_dict", r.to_dict), ("asdict", lambda r=r: asdict(r))):
            times = timeit.repeat(fn, number=a.number, repeat=a.repeats)
            row[name] = 1e6 * statistics.median(times) / a.number
        row["ratio"] = row["asdict"] / row["to_dict"]
        out["results"][str(w)] = row
        print(f"window {w:5d}: to_dict {row['to_dict']:8.1f} us   asdict {row['asdict']:8.1f} us   x{row['ratio']:.0f}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in ("asdict", "to_dict"):
        ax.plot(WINDOWS, [out["results"][str(w)][name] for w in WINDOWS], marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("window token ids in the record")
    ax.set_ylabel("us per record (CPU)")
    ax.set_title("SessionRecord -> dict, per commit on the directory")
    ax.legend()
    save_plot(a.json.stem, fig, str(a.json.parent))


if __name__ == "__main__":
    main()
