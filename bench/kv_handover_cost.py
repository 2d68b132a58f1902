"""Cost of handing one conversation's KV over through the object store (a drain or a
rebalance), old way against new, side by side in one run on this machine:

- pickled: the replica pickles the torch KVSnapshot to bytes on its event loop, the
  bytes go to the directory as an argument, the directory puts them again, the next
  replica gets the bytes and unpickles them;
- wire (deployments/replica/kv_wire.py): uint8 numpy views put from a worker thread,
  the directory reads them in place and puts one copy, the next replica maps them and
  clones into its own tensors.

Per stage: wall time, and how much of its normal rate a pure-Python thread kept
meanwhile (GIL share: an event loop sharing the process gets about that much).

    python bench/kv_handover_cost.py --mib 512     # 7B shape, 4+1020: 512 MiB a conversation
"""

from __future__ import annotations

import argparse
import pickle
import sys
import threading
import time
from pathlib import Path

import ray
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import save_plot, write_results  # noqa: E402
from deployments.replica import kv_wire  # noqa: E402
from swiftinfer_core.protocol import KVSnapshot, SessionRecord  # noqa: E402


class Spinner:
    """A Python thread counting; ``share(f)`` runs f and returns (seconds, its rate then / idle rate)."""

    def __init__(self) -> None:
        self.ticks, self.stop = 0, False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        time.sleep(0.3)
        n0 = self.ticks
        time.sleep(0.5)
        self.rate = (self.ticks - n0) / 0.5

    def _spin(self) -> None:
        while not self.stop:
            self.ticks += 1

    def share(self, f):
        n0, t0 = self.ticks, time.perf_counter()
        out = f()
        dt = time.perf_counter() - t0
        return out, dt, (self.ticks - n0) / (self.rate * dt)


def snapshot(mib: int) -> KVSnapshot:
    rows = mib * (1 << 20) // (2 * 32 * 32 * 128 * 2)  # 7B shape: 32 layers x 32 heads x 128, bf16, K and V
    k = torch.randn(32, 32, rows, 128).to(torch.bfloat16)
    record = SessionRecord("s", [1, 2, 3, 4], list(range(rows - 4)), [], tokens_seen=rows, rounds=1)
    return KVSnapshot("fp", record, rows, k, k.clone())


def run(snap: KVSnapshot, spin: Spinner) -> dict:
    stages = {}

    def stage(way, name, f):
        out, dt, share = spin.share(f)
        stages.setdefault(way, []).append({"stage": name, "seconds": round(dt, 4), "gil_share_left": round(share, 3)})
        return out

    blob = stage("pickled", "replica: pickle.dumps (event loop)", lambda: pickle.dumps(snap, protocol=pickle.HIGHEST_PROTOCOL))
    ref = stage("pickled", "replica: argument to the directory", lambda: ray.put(blob))
    got = stage("pickled", "directory: argument read", lambda: ray.get(ref))
    held = stage("pickled", "directory: ray.put", lambda: ray.put(got))
    del got, blob, ref
    back = stage("pickled", "next replica: ray.get", lambda: ray.get(held))
    stage("pickled", "next replica: pickle.loads", lambda: pickle.loads(back))
    del back, held

    ref = stage("wire", "replica: pack + ray.put (thread)", lambda: ray.put(kv_wire.pack(snap)))
    got = stage("wire", "directory: ray.get (in place)", lambda: ray.get(ref))
    held = stage("wire", "directory: ray.put (thread)", lambda: ray.put(got))
    del got, ref
    back = stage("wire", "next replica: ray.get (in place)", lambda: ray.get(held))
    out = stage("wire", "next replica: unpack (clone)", lambda: kv_wire.unpack(back))
    assert torch.equal(out.k, snap.k) and torch.equal(out.v, snap.v)
    return stages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="folder (default $OUT, else bench/results)")
    a = p.parse_args(argv)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, object_store_memory=(6 * a.mib + 512) << 20)
    snap, spin = snapshot(a.mib), Spinner()
    runs = [run(snap, spin) for _ in range(a.repeats)]
    spin.stop = True
    best = {way: [min((r[way][i] for r in runs), key=lambda s: s["seconds"]) for i in range(len(runs[0][way]))] for way in runs[0]}
    totals = {way: round(sum(s["seconds"] for s in st), 3) for way, st in best.items()}
    write_results("kv_handover_cost", {"snapshot_mib": a.mib, "repeats": a.repeats, "best_of_repeats": best,
                                        "total_seconds": totals, "runs": runs}, a.out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3))
    for i, way in enumerate(best):
        left = 0.0
        for s in best[way]:
            ax.barh(i, s["seconds"], left=left)
            ax.text(left + s["seconds"] / 2, i, f"{s['stage'].split(':')[1].strip()[:14]}\n{s['seconds']:.2f}s", ha="center", va="center", fontsize=6)
            left += s["seconds"]
    ax.set_yticks(range(len(best)), list(best))
    ax.set_xlabel(f"seconds for one {a.mib} MiB KV snapshot (best of {a.repeats}), stage by stage")
    save_plot("kv_handover_cost", fig, a.out)
    print(f"{'way':8} {'stage':40} {'s':>7} {'GIL left':>9}")
    for way, st in best.items():
        for s in st:
            print(f"{way:8} {s['stage']:40} {s['seconds']:7.3f} {s['gil_share_left']:9.2f}")
        print(f"{way:8} {'total':40} {totals[way]:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
