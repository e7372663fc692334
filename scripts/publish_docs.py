"""Build the documentation site as CI does, check it, and publish it to GitHub Pages.

Usage::

    python scripts/publish_docs.py build     # gen_docs + mkdocs build --strict into build/site/ + checks
    python scripts/publish_docs.py deploy    # the same, then push build/site/ to the gh-pages branch

``build/site/`` is the CI artifact (``.github/workflows/docs.yml`` uploads it and deploys it to GitHub
Pages); ``deploy`` is the same step by hand (``ghp-import``, which MkDocs installs, commits the folder
to ``gh-pages`` and pushes it to ``origin``). The checks fail the build when a page shows Markdown it
did not render (a literal ``!!!`` admonition) or a path of the machine that built it, and when
``site_url`` in ``mkdocs.yml`` is not the GitHub Pages address of the ``origin`` remote.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "build" / "site"


def pages_url(remote: str) -> str | None:
    """The GitHub Pages address of a GitHub remote (``git@github.com:OWNER/REPO.git`` -> ``https://owner.github.io/REPO/``)."""
    m = re.match(r"(?:https://github\.com/|git@github\.com:|ssh://git@github\.com/)([^/]+)/(.+?)(?:\.git)?/?$", remote)
    if not m:
        return None
    owner, repo = m.groups()
    return f"https://{owner.lower()}.github.io/" + ("" if repo.lower() == f"{owner.lower()}.github.io" else f"{repo}/")


def site_problems(site: Path, forbidden: list[str]) -> list[str]:
    """Pages with a literal admonition (``!!!``) or one of the ``forbidden`` strings (build paths)."""
    problems = []
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf-8", errors="replace")
        rel = page.relative_to(site)
        if "!!!" in text:
            problems.append(f"{rel}: literal '!!!' (an admonition nbconvert or Markdown did not render)")
        for path in forbidden:
            if path and path in text:
                problems.append(f"{rel}: shows the build machine's path {path}")
    return problems


def build(site: Path = SITE) -> int:
    """Regenerate the generated pages and build the site strictly into ``site``; 0 when it passes the checks."""
    env = dict(os.environ, BERG_QUIET="1", MPLBACKEND="Agg", NO_MKDOCS_2_WARNING="1")
    subprocess.run([sys.executable, str(REPO / "scripts" / "gen_docs.py")], cwd=REPO, check=True)
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO, env=env, check=True
    )
    problems = site_problems(site, [str(REPO), str(Path.home()), str(site)])
    for line in problems:
        sys.stderr.write(f"publish_docs: {line}\n")
    return 1 if problems else 0


def check_site_url() -> int:
    """0 when mkdocs.yml's site_url is the origin remote's GitHub Pages address (or there is no remote)."""
    from berg.yamlio import read_yaml

    configured = str(read_yaml(REPO / "mkdocs.yml").get("site_url") or "")
    remote = subprocess.run(["git", "remote", "get-url", "origin"], cwd=REPO, capture_output=True, text=True)
    expected = pages_url(remote.stdout.strip()) if remote.returncode == 0 else None
    if expected and configured.rstrip("/") != expected.rstrip("/"):
        sys.stderr.write(f"publish_docs: mkdocs.yml site_url is {configured!r}; origin publishes to {expected!r}\n")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``build`` or ``deploy``; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("build", "deploy"))
    args = ap.parse_args(argv)
    status = build()
    if status or args.action == "build":
        return status
    if check_site_url():
        return 1
    from ghp_import import ghp_import  # installed with mkdocs

    ghp_import(str(SITE), mesg="Publish the documentation site", push=True, force=True, nojekyll=True)
    sys.stdout.write(f"published {SITE} to the gh-pages branch of origin\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
