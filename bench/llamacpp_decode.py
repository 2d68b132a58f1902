"""llama.cpp's side of bench/cpu_decode.py: the same prompt and token count
through ``llama-cpp-python`` on the GGUF file the default model comes from.

Runs in the benchmark's own venv (llama-cpp-python built from source), imports
nothing of this project, prints one JSON object:

    VENV/bin/python bench/llamacpp_decode.py --gguf FILE.gguf --prompt TEXT --tokens 100 --rounds 3 --threads 2

The prompt is wrapped in SmolLM2's chat template with the same system line as
the engine's (conversation/chat_format.py), so both prefill the same text; each round
starts from an empty KV cache. Greedy, end token ignored (``Llama.generate``
does not stop on it; the loop stops after ``tokens``). TTFT is from the call to
the first sampled token, tokens/s counts tokens after the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def one_round(llm, prompt_ids: list[int], tokens: int) -> dict:
    llm.reset()  # empty cache: the whole prompt is prefilled again
    t0 = time.perf_counter()
    first, n = None, 0
    for _ in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
        n += 1
        if first is None:
            first = time.perf_counter()
        if n >= tokens:
            break
    end = time.perf_counter()
    return {"ttft_s": first - t0, "tok_s": (n - 1) / (end - first), "tokens": n, "prompt_tokens": len(prompt_ids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import llama_cpp

    llm = llama_cpp.Llama(model_path=a.gguf, n_ctx=2048, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    text = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{a.prompt}<|im_end|>\n<|im_start|>assistant\n"
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    one_round(llm, ids, 8)  # warm-up, not kept
    rounds = [one_round(llm, ids, a.tokens) for _ in range(a.rounds)]
    print(json.dumps({"llama_cpp_python": llama_cpp.__version__, "system_info": llama_cpp.llama_print_system_info().decode().strip(), "threads": a.threads, "gguf": a.gguf,
                      "tok_s_median": statistics.median(r["tok_s"] for r in rounds),
                      "ttft_s_median": statistics.median(r["ttft_s"] for r in rounds), "rounds": rounds}))


if __name__ == "__main__":
    main()
