"""Issue 18: what structured output and logprobs cost batched decode.

The real engine (EngineCore: scheduler, model, sampler, grammar masks) with
``--sessions`` conversations (default 64) decoding together, each a fresh
session with a short prompt. For each mode a share of the turns asks for it:
``none``; ``grammar`` (a JSON schema that forces a long array, so no
constrained turn ends early: the step's cost is the matchers filling their
bitmasks on the CPU, one copy and the masking on the device, and each
matcher accepting its token); ``logprobs`` (top 5). All turns run the same
number of steps (``max_tokens``), unconstrained ones with ``ignore_eos``.
Decode tokens/s is timed over ``--steps`` steps after every turn has started
decoding. The default model (real weights) by default; ``--random`` keeps its
tokenizer and shape with random weights (for a machine without the weights).

    python bench/structured_output.py [--sessions 64] [--steps 32] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

from swiftinfer_core.config import EngineConfig, Grammar, SamplingParams  # noqa: E402
from swiftinfer_core.engine.core import EngineCore  # noqa: E402
from swiftinfer_core.engine.session import TurnState  # noqa: E402

LONG_ARRAY = {"type": "object", "additionalProperties": False, "required": ["digits"], "properties": {
    "digits": {"type": "array", "minItems": 1000, "items": {"type": "integer", "minimum": 0, "maximum": 9}}}}
MODES = {
    "none": {},
    "grammar": {"grammar": Grammar(kind="json_schema", json_schema=json.dumps(LONG_ARRAY))},
    "logprobs": {"logprobs": True, "top_logprobs": 5},
}


def run_mode(core: EngineCore, sessions: int, share: float, extra: dict, steps: int, tag: str) -> dict:
    """Decode tokens/s with ``share`` of ``sessions`` turns asking for ``extra``."""
    n = round(sessions * share)
    max_tokens = steps + 8
    turns = []
    for i in range(sessions):
        kw = extra if i < n else {"ignore_eos": True}
        params = SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=i, **kw)
        turns.append(core.add_turn(f"{tag}-{i}", [{"role": "user", "content": f"Count digits, run {i}."}], params))
    while any(t.state is not TurnState.DECODE for t in turns):  # prefill, and the first token of each
        core.step()
    core.step()  # one decode step of all rows before timing
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    before = core.stats().tokens_generated
    t0 = time.perf_counter()
    for _ in range(steps):
        core.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = core.stats().tokens_generated - before
    for i in range(sessions):
        core.close_session(f"{tag}-{i}")
    return {"tokens": tokens, "seconds": dt, "tok_s": tokens / dt, "step_ms": 1e3 * dt / steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--random", action="store_true", help="random weights at the model's shape")
    p.add_argument("--model", default="default", help="a model folder (with --random, config and tokenizer files suffice)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cfg = EngineConfig(model=args.model, max_sessions=args.sessions, window=508, max_batch_tokens=4096,
                       load_format="random" if args.random else "auto")
    core = EngineCore(cfg)
    core.warm_up()
    run_mode(core, args.sessions, 1.0, MODES["grammar"], 2, "warm")  # grammar tables and the schema compiled once, untimed
    run_mode(core, args.sessions, 0.25, MODES["logprobs"], 2, "warm-lp")  # the logprobs path's first use, untimed
    rows = []
    for mode, extra in MODES.items():
        for share in ((0.0,) if mode == "none" else (0.25, 1.0)):
            r = {"mode": mode, "share": share, **run_mode(core, args.sessions, share, extra, args.steps, f"{mode}{share}")}
            rows.append(r)
            print(common.table([r], ["mode", "share", "tok_s", "step_ms"]).splitlines()[-1], flush=True)
    base = rows[0]["tok_s"]
    for r in rows:
        r["vs_none"] = r["tok_s"] / base
    print(common.table(rows, ["mode", "share", "tokens", "tok_s", "step_ms", "vs_none"]))
    dev = str(core.loaded.device)
    common.write_results("structured_output", {"config": vars(args), "device": dev, "rows": rows}, args.out)
    plot(rows, args, dev)


def plot(rows: list[dict], args, dev: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = [r["mode"] if r["mode"] == "none" else f"{r['mode']} {int(100 * r['share'])}%" for r in rows]
    colours = ["grey" if r["mode"] == "none" else ("C0" if r["mode"] == "grammar" else "C1") for r in rows]
    ax.bar(range(len(rows)), [r["tok_s"] for r in rows], color=colours)
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("decode tokens/s")
    model = "SmolLM2-135M" if args.model == "default" else Path(args.model).name
    ax.set_title(f"{args.sessions} sessions decoding, {model}{' (random weights)' if args.random else ''}, {dev}", fontsize=9)
    fig.tight_layout()
    common.save_plot("structured_output", fig, args.out)


if __name__ == "__main__":
    main()
