"""The `stentor` command line itself."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_parser_imports_no_heavy_module():
    """`stentor --help` (every verb's parser) stays light: none of numpy, torch, transformers or numba."""
    script = (
        "import sys, stentor.cli\n"
        "stentor.cli.build_parser()\n"
        "print([m for m in ('numpy', 'torch', 'transformers', 'numba', 'tqdm') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
