"""The ``swiftinfer`` console script end to end on the real model."""

import json
import os
import subprocess
import sys

import pytest

from swiftinfer_core.cli.main import main


def test_eval_ppl_end_to_end(tmp_path, shakespeare_text, model_dir):
    text = tmp_path / "plays.txt"
    start = shakespeare_text.find("ACT")
    text.write_text(shakespeare_text[start : start + 3000])
    out, png = tmp_path / "ppl.json", tmp_path / "ppl.png"
    rc = main(["eval-ppl", "--text", str(text), "--tokens", "120", "--sinks", "4", "--window", "28",
               "--modes", "dense,window,streaming,recompute", "--segment", "30", "--device", "cpu",
               "--json", str(out), "--plot", str(png)])
    assert rc == 0 and png.stat().st_size > 1000
    res = json.loads(out.read_text())
    assert res["tokens"] == 120 and res["sinks"] == 4 and res["window"] == 28 and res["model"]
    modes = res["modes"]
    assert set(modes) == {"dense", "window", "streaming", "recompute"}
    for r in modes.values():
        assert r["ppl"] > 1 and len(r["segments"]) == 4
    # the first 30 targets all fit in the 32-token cache: every mode sees the same context
    first = {name: r["segments"][0] for name, r in modes.items()}
    assert max(first.values()) - min(first.values()) < 1e-3 * first["dense"]


def test_eval_ppl_rejects_bad_modes(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 50)
    try:
        main(["eval-ppl", "--text", str(text), "--tokens", "50", "--modes", "dense,bogus"])
    except SystemExit as exc:
        assert "bogus" in str(exc)
    else:
        raise AssertionError("expected SystemExit")


def test_chat_session_in_terminal(model_dir):
    exe = os.path.join(os.path.dirname(sys.executable), "swiftinfer")
    proc = subprocess.run(
        [exe, "chat", "--max-tokens", "12", "--window", "60"],
        input="What is the capital of France?\n/stats\n/quit\n",
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "bot> " in proc.stdout and "Paris" in proc.stdout
    assert "rounds=1" in proc.stdout


def test_fetch_model_names_gemma3(capsys):
    """``swiftinfer fetch-model gemma3-270m`` prepares the second real model (once) and prints its folder."""
    from pathlib import Path

    from swiftinfer_core.model.gemma3_gguf import ensure_gemma3

    assert main(["fetch-model", "gemma3-270m"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder == ensure_gemma3() and json.loads((folder / "config.json").read_text())["model_type"] == "gemma3_text"
    assert "sha256=" in (folder / "SOURCE").read_text()


@pytest.mark.parametrize("name", ["default", "gemma3-270m"])
def test_fetch_model_from_a_given_gguf_refuses_a_file_off_the_pin(name, tmp_path, monkeypatch):
    """``fetch-model NAME --gguf FILE`` (a machine without a package index) converts only the pinned file."""
    monkeypatch.setenv("SWIFTINFER_HOME", str(tmp_path / "home"))
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(RuntimeError, match="does not match the pinned"):
        main(["fetch-model", name, "--gguf", str(fake)])
    assert not any((tmp_path / "home" / "models").glob("*/config.json"))


def test_a_tokenizer_without_its_merges_is_refused(model_dir, tmp_path):
    """transformers 5.17 read Gemma 3's GGUF tokenizer one character per token; conversion refuses such
    a tokenizer, naming what happened, and takes the real one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from swiftinfer_core.model.fetch import PROBE, check_subword

    chars = sorted(set(PROBE))
    raw = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    char_level = PreTrainedTokenizerFast(tokenizer_object=raw)
    assert len(char_level(PROBE, add_special_tokens=False).input_ids) == len(PROBE)
    with pytest.raises(RuntimeError, match="merges were lost"):
        check_subword(char_level, "char-level")
    check_subword(AutoTokenizer.from_pretrained(model_dir), "default model")
