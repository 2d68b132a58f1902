"""``swiftinfer chat``: an endless terminal conversation with streamed replies."""

from __future__ import annotations

import uuid

HELP = "commands: /stats (cache and counters), /new (start a new conversation), /quit"


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="talk to the model in the terminal")
    p.add_argument("--model", default="default", help="'default' or a local HF checkpoint folder")
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--system", default=None, help="system prompt for the first round")
    p.add_argument("--tp-size", type=int, default=1, help="tensor-parallel ranks (one process and device each)")
    p.set_defaults(func=run)


def run(args) -> int:
    from swiftinfer_core import Engine, EngineConfig, InvalidRequestError, SamplingParams

    engine = Engine(EngineConfig(model=args.model, sink_tokens=args.sinks, window=args.window, max_sessions=2, tp_size=args.tp_size))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    session = uuid.uuid4().hex
    first = True
    print(f"SwiftInfer chat ({engine.core.loaded.path.name}, cache {engine.core.layout.sinks}+{engine.core.layout.window}). {HELP}")
    try:
        while True:
            try:
                line = input("\nyou> ").strip()
            except EOFError:
                break
            if not line:
                continue
            if line == "/quit":
                break
            if line == "/stats":
                print(engine.session_stats(session) if engine.has_session(session) else "no rounds yet")
                continue
            if line == "/new":
                session, first = uuid.uuid4().hex, True
                print("new conversation")
                continue
            messages = [{"role": "user", "content": line}]
            if first and args.system:
                messages.insert(0, {"role": "system", "content": args.system})
            print("bot> ", end="", flush=True)
            try:
                for chunk in engine.chat_sync(session, messages, params):
                    print(chunk.text, end="", flush=True)
            except InvalidRequestError as exc:
                print(f"[error: {exc}]")
            first = False
            print()
    finally:
        engine.close()
    return 0
