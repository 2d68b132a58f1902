"""``swiftinfer eval-ppl``: perplexity of a long text under dense, window, StreamingLLM and recompute."""

from __future__ import annotations

import datetime
import json
import platform
import sys
import time
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("eval-ppl", help="next-token perplexity over a long text in the paper's four modes")
    p.add_argument("--text", required=True, type=Path, help="a UTF-8 text file")
    p.add_argument("--tokens", required=True, type=int, help="evaluate the first N tokens")
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--window", type=int, default=1020)
    p.add_argument("--modes", default="dense,window,streaming,recompute")
    p.add_argument("--recompute-stride", type=int, default=1, help="score recompute on every k-th token only")
    p.add_argument("--recompute-sample", type=int, default=None, help="score recompute on this many random tokens instead")
    p.add_argument("--recompute-last", type=int, default=None, help="... drawn from the last N tokens of the text")
    p.add_argument("--prefix-tokens", type=int, default=None, help="run dense and window on the first N tokens only")
    p.add_argument("--segment", type=int, default=None, help="tokens per reported segment (default N/10)")
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"], help="KV cache storage (EngineConfig.kv_cache_dtype)")
    p.add_argument("--json", type=Path, help="write results here")
    p.add_argument("--plot", type=Path, help="write a PNG plot here")
    p.set_defaults(func=run)


def run(args) -> int:
    from swiftinfer_core.config import EngineConfig
    from swiftinfer_core.eval.ppl import EvalPlan, Mode, evaluate
    from swiftinfer_core.engine.engine_model import build_engine_model

    try:
        modes = [Mode(m.strip()) for m in args.modes.split(",") if m.strip()]
    except ValueError as exc:
        raise SystemExit(f"--modes: {exc}; choose from {[m.value for m in Mode]}")
    if args.tokens < 2 or args.recompute_stride < 1:
        raise SystemExit("--tokens must be >= 2 and --recompute-stride >= 1")
    cfg = EngineConfig(model=args.model, sink_tokens=args.sinks, window=args.window, max_sessions=1,
                       device=args.device, dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype)
    m = build_engine_model(cfg)
    ids = m.tokenizer(args.text.read_text(encoding="utf-8"), add_special_tokens=False).input_ids
    if len(ids) < args.tokens:
        raise SystemExit(f"{args.text} has {len(ids)} tokens, fewer than --tokens {args.tokens}")
    ids = ids[: args.tokens]
    segment = args.segment or max(1, args.tokens // 10)
    plan = EvalPlan(sinks=args.sinks, window=args.window, prefix_tokens=args.prefix_tokens, stride=args.recompute_stride,
                    sample=args.recompute_sample, last=args.recompute_last)
    results: dict = {}
    for mode in modes:  # one at a time: the JSON keeps each finished mode if a later one is cut short
        results.update(evaluate(m, cfg, ids, [mode], plan, progress=_reporter))
        out = _summary(args, m, results, segment, done=len(results) == len(modes))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2))
    print(f"{'mode':<10} {'ppl':>10}  segments (every {segment} tokens)")
    for name, r in out["modes"].items():
        print(f"{name:<10} {r['ppl']:>10.3f}  " + " ".join(f"{x:.2f}" for x in r["segments"]))
    if args.plot:
        plot(out, args.plot)
    return 0


def _summary(args, m, results: dict, segment: int, done: bool) -> dict:
    import torch

    from swiftinfer_core.eval.ppl import Mode

    rec = results.get(Mode.RECOMPUTE)
    sampled = set(rec.targets) if rec else None
    return {
        "modes": {
            mode.value: {
                "ppl": r.ppl(),
                "segments": [p for _, p in r.segments(segment)],
                "segment_starts": [t for t, _ in r.segments(segment)],
                "seconds": round(r.seconds, 2),
                **({"ppl_on_recompute_targets": r.ppl(sampled)} if sampled else {}),
            }
            for mode, r in results.items()
        },
        "complete": done,
        "tokens": args.tokens, "sinks": args.sinks, "window": args.window, "segment": segment,
        "recompute_stride": args.recompute_stride, "recompute_sample": args.recompute_sample,
        "recompute_last": args.recompute_last, "prefix_tokens": args.prefix_tokens, "model": m.path.name, "text": args.text.name,
        "device": torch.cuda.get_device_name() if m.device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "dtype": str(m.dtype).replace("torch.", ""), "kv_cache_dtype": args.kv_cache_dtype, "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "swiftinfer " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("swiftinfer") else " ".join(sys.argv),
    }


def _reporter(mode):
    """Prints a mode's progress to stderr about every tenth of the way, with its rate."""
    t0, shown = time.perf_counter(), [-1]

    def report(done: int, total: int) -> None:
        if done * 10 // max(total, 1) > shown[0] or done == total:
            shown[0] = done * 10 // max(total, 1)
            dt = time.perf_counter() - t0
            print(f"{mode.value}: {done}/{total} in {dt:.1f} s ({done / max(dt, 1e-9):.0f}/s)", file=sys.stderr, flush=True)

    return report


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    seg = out["segment"]
    for name, r in out["modes"].items():
        xs = [t + seg - 1 for t in r["segment_starts"]]
        ax.plot(xs, r["segments"], marker="o", label=f"{name} (ppl {r['ppl']:.2f})")
    ax.axvline(out["sinks"] + out["window"], color="gray", ls=":", label="cache size")
    ax.set_yscale("log")
    ax.set_xlabel("tokens into the text")
    ax.set_ylabel(f"perplexity per {seg}-token segment")
    ax.set_title(f"{out['model']}: sinks {out['sinks']} + window {out['window']}, {out['tokens']} tokens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
