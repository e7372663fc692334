"""MkDocs hook: guides whose front matter says ``execute: true`` are run when the site is built.

Their ```` ```python ```` blocks run in order, in one namespace, in a subprocess whose working folder
is a fresh temporary folder holding the repository's ``examples/`` (so a guide reads and writes files
as a user would, and the build machine's paths never reach the page). Each block's printed output is
inserted below it as a ``text`` block. A block that raises fails the build with its traceback.
```` ```py ```` blocks are shown, never run (what a docs build cannot have: a Slurm cluster, NSD).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900

# The guard: Dask's worker processes start by importing the main module; they must not rerun the page.
_RUNNER = r"""
import contextlib, io, json, sys, traceback
if __name__ == "__main__":
    blocks = json.load(open(sys.argv[1]))
    ns = {"__name__": "__main__"}
    outputs = []
    for lineno, code in blocks:
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                exec(compile(code, f"block at line {lineno}", "exec"), ns)
        except Exception:
            sys.stderr.write(f"block at line {lineno} failed:\n{traceback.format_exc()}")
            sys.exit(1)
        outputs.append(buffer.getvalue())
    json.dump(outputs, open(sys.argv[2], "w"))
"""


def _python_blocks(markdown: str) -> list[tuple[int, int, str]]:
    """``(first line, closing-fence line, code)`` of every top-level ```python block (0-based lines)."""
    lines, out, i = markdown.split("\n"), [], 0
    while i < len(lines):
        if lines[i].rstrip() == "```python":
            start, body = i, []
            i += 1
            while i < len(lines) and lines[i].rstrip() != "```":
                body.append(lines[i])
                i += 1
            out.append((start, i, "\n".join(body)))
        i += 1
    return out


def run_blocks(blocks: list[str], name: str) -> list[str]:
    """Run code blocks in order in one namespace (a subprocess in a temporary folder); their stdout each."""
    with tempfile.TemporaryDirectory(prefix="berg-guide-") as tmp:
        work = Path(tmp)
        (work / "examples").symlink_to(REPO / "examples", target_is_directory=True)
        (work / "blocks.json").write_text(json.dumps([[i, b] for i, b in enumerate(blocks)]))
        (work / "run.py").write_text(_RUNNER)
        env = dict(os.environ, MPLBACKEND="Agg", BERG_QUIET="1", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        res = subprocess.run(
            [sys.executable, "run.py", "blocks.json", "outputs.json"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        if res.returncode != 0:
            raise PluginError(f"{name}: an executed block failed:\n{res.stderr[-4000:]}")
        outputs = json.loads((work / "outputs.json").read_text())
        real = str(work.resolve())
        # a printed path names the user's folder, not the build machine's
        return [o.replace(real + os.sep, "").replace(str(work) + os.sep, "").replace(str(REPO), ".") for o in outputs]


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Execute the page's python blocks when its front matter asks for it, and show their output."""
    if not page.meta.get("execute"):
        return markdown
    found = _python_blocks(markdown)
    outputs = run_blocks([code for _, _, code in found], page.file.src_path)
    lines = markdown.split("\n")
    for (_, end, _), output in sorted(zip(found, outputs), key=lambda t: -t[0][1]):
        text = output.rstrip("\n")
        if text:
            lines[end + 1 : end + 1] = ["", "```text", *re.sub(r"```", "'''", text).split("\n"), "```"]
    return "\n".join(lines)
