"""berg as a hub: publish a toy model, add its registry elsewhere, load it by its namespaced name.

Covers issue 25's tests: publish to a local folder and to the SeaweedFS S3 server, a second process with
an empty cache and config that adds the registry by URL and encodes bit-identically, a package that
ships a registry through the ``berg.registries`` entry point (a wheel the test writes and pip-installs),
versions, collisions and pins, tampered fragments and artifacts, and a publish killed midway.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

import berg
from berg.errors import ArtifactNotFoundError, IntegrityError, InvalidParameterError, ModelNotFoundError
from berg.hub.publishing import publish
from berg.hub.registries import add_registry, list_registries, prefer_registry, remove_registry, update_registry
from berg.registry import Registry, RegistryError
from berg.testing import toy_model

pytestmark = pytest.mark.filterwarnings("ignore::berg.errors.UntrainedBackboneWarning")

MODEL = "toy-hub"
IMAGES = np.random.default_rng(0).integers(0, 256, (3, 40, 36, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_model(tmp_path_factory.mktemp("toy"), "flat", model_id=MODEL, subjects=(1,), size=32)


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    """What the publisher's own client computes (the number every loader must reproduce bit for bit)."""
    client = toy.client(tmp_path_factory.mktemp("pubcache"))
    model = client.get_encoding_model(MODEL, subject=1, device="cpu", backbone_weights="untrained")
    return client.encode(model, IMAGES, show_progress=False)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty user config and cache for this test."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("BERG_CACHE", str(tmp_path / "cache"))
    for name in ("BERG_REGISTRY", "BERG_OFFLINE", "BERG_S3_ENDPOINT", "BERG_S3_SIGNED"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _publish(toy, to, tmp_path, **kwargs):
    kwargs.setdefault("namespace", "lab")
    return publish(MODEL, str(to), client=toy.client(tmp_path / "pubcache"), show_progress=False, **kwargs)


def _encode(name, client=None):
    client = client or berg.BERG()
    model = client.get_encoding_model(name, subject=1, device="cpu", backbone_weights="untrained")
    return model, client.encode(model, IMAGES, show_progress=False)


def _n_files(toy) -> int:
    return len(json.loads((toy.berg_dir / toy.prefix / "manifest.json").read_text())["files"])


# --------------------------------------------------------------------------- folder: publish, add, load


def test_publish_to_a_folder_and_load_by_name(toy, reference, home):
    site = home / "site"
    result = _publish(toy, site, home)
    assert result["model"] == f"lab/{MODEL}@1"
    assert (result["uploaded"], result["skipped"]) == (_n_files(toy), 0)
    added = add_registry("lab", str(site), sha256=result["sha256"])
    assert added["models"] == [f"lab/{MODEL}@1"] and added["namespace"] == "lab"

    model, out = _encode(f"lab/{MODEL}")
    np.testing.assert_array_equal(out, reference)
    prov = model.provenance()
    assert prov["model_id"] == f"lab/{MODEL}@1"  # the exact version
    assert prov["source"]["manifest_sha256"] == result["manifest_sha256"]  # and the artifact's hash
    assert prov["source"]["registry"] == {"name": "lab", "url": str(site)}
    spec = berg.BERG().registry.get(f"lab/{MODEL}")
    assert (spec.registry, spec.namespace, spec.version) == ("lab", "lab", 1)
    # the short id is not in the default namespace: the error points at the namespaced one
    with pytest.raises(ModelNotFoundError, match=f"lab/{MODEL}"):
        berg.BERG().registry.get(MODEL)
    assert f"lab/{MODEL}" in berg.BERG().list_models("lab/*")

    again = _publish(toy, site, home)  # same artifact: nothing uploaded, same version, same fragment
    assert (again["model"], again["uploaded"], again["skipped"]) == (result["model"], 0, _n_files(toy))
    assert again["sha256"] == result["sha256"]

    removed = remove_registry("lab")
    assert removed["url"] == str(site)
    assert [r["name"] for r in list_registries()] == ["berg"]
    with pytest.raises(ModelNotFoundError):
        berg.BERG().registry.get(f"lab/{MODEL}")


def _changed_artifact(toy, tmp_path) -> Path:
    """A copy of the toy's artifact with one more file (so a different manifest)."""
    from berg.fsutil import sha256_file

    art = tmp_path / "artifact2"
    shutil.copytree(toy.berg_dir / toy.prefix, art)
    (art / "notes.json").write_text('{"retrained": true}')
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"]["notes.json"] = {
        "size": (art / "notes.json").stat().st_size,
        "sha256": sha256_file(art / "notes.json"),
    }
    (art / "manifest.json").write_text(json.dumps(manifest))
    return art


def test_versions_newest_by_default_and_never_replaced(toy, home):
    site = home / "site"
    _publish(toy, site, home)
    art = _changed_artifact(toy, home)
    second = _publish(toy, site, home, artifact=art)
    assert second["model"] == f"lab/{MODEL}@2" and second["uploaded"] == _n_files(toy) + 1
    with pytest.raises(InvalidParameterError, match="already published with another artifact") as info:
        _publish(toy, site, home, artifact=art, version=1)
    assert "--version 3" in str(info.value)
    with pytest.raises(InvalidParameterError, match="holds namespace 'lab'"):
        _publish(toy, site, home, namespace="other")
    with pytest.raises(InvalidParameterError, match="--namespace"):
        _publish(toy, home / "fresh", home, namespace=None)

    add_registry("lab", str(site))
    reg = Registry()
    assert reg.get(f"lab/{MODEL}").version == 2 and reg.versions(f"lab/{MODEL}") == [1, 2]
    assert reg.get(f"lab/{MODEL}@1").source["manifest_sha256"] != reg.get(f"lab/{MODEL}@2").source["manifest_sha256"]
    # the fragment states each fact once: the facts at the model, the pins per version
    doc = yaml.safe_load((site / "registry.yaml").read_text())
    entry = doc["models"][MODEL]
    assert {"modality", "recipe", "layout"} <= set(entry) and set(entry["versions"]) == {1, 2}
    assert set(entry["versions"][2]) == {"card", "card_sha256", "source"}


def test_publish_killed_midway_shows_nothing_and_resumes(toy, reference, home):
    site = home / "site"
    script = textwrap.dedent(
        """
        import json, os, signal, sys
        from berg.hub import locations
        done = []
        put = locations.FolderLocation.put_file
        def dying_put(self, *args, **kwargs):
            put(self, *args, **kwargs)
            done.append(1)
            if len(done) == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # as a crash or a kill -9 would
        locations.FolderLocation.put_file = dying_put
        import berg
        from berg.hub.publishing import publish
        publish("toy-hub", sys.argv[2], client=berg.BERG(**json.loads(sys.argv[1])), namespace="lab",
                show_progress=False)
        """
    )
    options = toy.options(home / "pubcache")
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(options), str(site)], capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (site / "registry.yaml").exists()  # nothing is visible
    with pytest.raises(ArtifactNotFoundError):
        add_registry("lab", str(site))
    assert [r["name"] for r in list_registries()] == ["berg"]

    resumed = _publish(toy, site, home)
    assert (resumed["uploaded"], resumed["skipped"]) == (_n_files(toy) - 2, 2)  # only what was missing
    add_registry("lab", str(site))
    np.testing.assert_array_equal(_encode(f"lab/{MODEL}")[1], reference)


# --------------------------------------------------------------------------- trust


def test_tampered_fragments_are_refused(toy, home):
    site = home / "site"
    first = _publish(toy, site, home)
    with pytest.raises(IntegrityError, match="not the 0{64}"):
        add_registry("lab", str(site), sha256="0" * 64)
    assert [r["name"] for r in list_registries()] == ["berg"]  # nothing kept

    add_registry("lab", str(site), sha256=first["sha256"])
    copy = home / "config" / "berg" / "registries" / "lab" / "registry.yaml"
    original = copy.read_bytes()
    copy.write_bytes(original.replace(b"fmri", b"eeg"))  # the pinned copy changed behind berg's back
    with pytest.raises(IntegrityError, match="pinned sha256"):
        Registry()
    copy.write_bytes(original)
    card = home / "config" / "berg" / "registries" / "lab" / MODEL / "1" / f"{MODEL}.yaml"
    card.write_text(card.read_text() + "\n# edited\n")
    with pytest.raises(IntegrityError, match="card of"):
        _encode(f"lab/{MODEL}")

    # the publisher publishes version 2: nothing changes until `update`, which shows the ids
    second = _publish(toy, site, home, artifact=_changed_artifact(toy, home))
    assert Registry().versions(f"lab/{MODEL}") == [1]
    diff = update_registry("lab")
    assert diff["added"] == [f"lab/{MODEL}@2"] and diff["removed"] == [] and diff["changed"]
    assert (diff["old_sha256"], diff["sha256"]) == (first["sha256"], second["sha256"])
    assert update_registry("lab")["changed"] is False

    # a card changed at the source after publishing: the fragment's pin catches it
    (site / MODEL / "2" / f"{MODEL}.yaml").write_text("id: toy-hub\n")
    with pytest.raises(IntegrityError, match="inconsistent"):
        update_registry("lab")


def test_tampered_artifacts_are_refused(toy, home):
    site = home / "site"
    _publish(toy, site, home)
    add_registry("lab", str(site))
    readout = next(p for p in (site / MODEL / "1").rglob("*.safetensors"))
    data = bytearray(readout.read_bytes())
    data[-1] ^= 0xFF
    readout.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        _encode(f"lab/{MODEL}")

    manifest = site / MODEL / "1" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"files"', '"files" ', 1))
    client = berg.BERG(cache_dir=home / "fresh-cache")
    with pytest.raises(IntegrityError, match="not what its registry pins"):
        _encode(f"lab/{MODEL}", client)


def test_collisions_name_both_registries_and_pins_decide(toy, home):
    one, two = home / "one", home / "two"
    _publish(toy, one, home)
    _publish(toy, two, home)
    add_registry("one", str(one))
    with pytest.raises(RegistryError, match="more than one registry") as info:
        add_registry("two", str(two))
    assert "'one'" in str(info.value) and "'two'" in str(info.value) and str(one) in str(info.value)
    assert [r["name"] for r in list_registries()] == ["berg", "one"]  # the refused one is not kept

    prefer_registry(f"lab/{MODEL}", "one")
    add_registry("two", str(two))
    assert Registry().get(f"lab/{MODEL}").registry == "one"
    assert Registry(prefer={f"lab/{MODEL}": "two"}).get(f"lab/{MODEL}").registry == "two"
    assert Registry(outside=Registry().sources[1:], prefer={"lab": "two"}).get(f"lab/{MODEL}").registry == "two"
    with pytest.raises(RegistryError, match="no registry named"):
        prefer_registry("lab", "three")


def test_publish_refuses_code_that_outside_readers_refuse(toy, home, tmp_path):
    """A model whose entry names code from outside berg cannot be published (its readers would refuse it)."""
    reg = tmp_path / "own" / "registry.yaml"
    reg.parent.mkdir()
    entry = yaml.safe_load(toy.registry.read_text())["models"][MODEL]
    entry["model_class"] = "my_lab_code.models:Special"
    entry["card"] = str(toy.root / "model_cards" / f"{MODEL}.yaml")
    reg.write_text(yaml.safe_dump({"format_version": 1, "models": {MODEL: entry}}))
    client = berg.BERG(berg_dir=toy.berg_dir, cache_dir=tmp_path / "c", registry=reg, offline=True)
    with pytest.raises(InvalidParameterError, match="cannot be published as is.*unknown model class"):
        publish(MODEL, str(tmp_path / "site"), client=client, namespace="lab", show_progress=False)
    assert not (tmp_path / "site").exists()


# --------------------------------------------------------------------------- S3: a second process


def test_s3_publish_then_a_second_process_loads_it(toy, reference, home, s3_server, monkeypatch, tmp_path):
    from berg.testing.s3server import ADMIN_KEY, ADMIN_SECRET

    s3_server.create_bucket("hub-test")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ADMIN_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ADMIN_SECRET)
    url = "s3://hub-test/labs/lab/"
    result = _publish(toy, url, home, endpoint=s3_server.endpoint_url)
    assert result["url"] == "s3://hub-test/labs/lab/registry.yaml" and result["uploaded"] == _n_files(toy)
    assert _publish(toy, url, home, endpoint=s3_server.endpoint_url)["uploaded"] == 0  # resumable / idempotent

    # a second process, anonymous (no credentials), empty config and cache
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BERG_"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "cfg2"), BERG_CACHE=str(tmp_path / "cache2"), BERG_QUIET="1")
    berg_cli = [sys.executable, "-m", "berg.cli"]
    add = subprocess.run(
        [*berg_cli, "registry", "add", "lab", url, "--sha256", result["sha256"], "--endpoint", s3_server.endpoint_url],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    assert f"lab/{MODEL}@1" in add.stdout
    listed = subprocess.run([*berg_cli, "list", "lab/*"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert listed.returncode == 0 and f"lab/{MODEL}" in listed.stdout, listed.stderr
    out = tmp_path / "second.npy"
    code = (
        "import sys, numpy as np, berg\n"
        "b = berg.BERG()\n"
        f"m = b.get_encoding_model('lab/{MODEL}', subject=1, device='cpu', backbone_weights='untrained')\n"
        "np.save(sys.argv[2], b.encode(m, np.load(sys.argv[1]), show_progress=False))\n"
    )
    np.save(tmp_path / "images.npy", IMAGES)
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "images.npy"), str(out)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(np.load(out), reference)  # bit-identical to the publisher's output

    # the same registry over plain HTTP(S) (SeaweedFS serves the bucket path-style to anonymous readers)
    http_url = f"{s3_server.endpoint_url}/hub-test/labs/lab/registry.yaml"
    add_registry("web", http_url, sha256=result["sha256"])
    np.testing.assert_array_equal(_encode(f"lab/{MODEL}")[1], reference)

    # an artifact changed on the server after publishing is refused by a reader with an empty cache
    client = s3_server.admin_client()
    key = next(
        o["Key"] for o in client.list_objects_v2(Bucket="hub-test", Prefix=f"labs/lab/{MODEL}/1/")["Contents"]
        if o["Key"].endswith(".safetensors")
    )  # fmt: skip
    body = bytearray(client.get_object(Bucket="hub-test", Key=key)["Body"].read())
    body[-1] ^= 0xFF
    client.put_object(Bucket="hub-test", Key=key, Body=bytes(body))
    with pytest.raises(IntegrityError):
        _encode(f"lab/{MODEL}", berg.BERG(cache_dir=tmp_path / "cache3"))


# --------------------------------------------------------------------------- a package ships a registry


def _wheel(tmp_path: Path, package_dir: Path) -> Path:
    """A minimal wheel of ``toylab_models`` whose ``berg.registries`` entry point names its registry.yaml."""
    import base64
    import hashlib

    dist = "toylab_models-1.0.dist-info"
    files = {
        f"toylab_models/{p.relative_to(package_dir).as_posix()}": p.read_bytes()
        for p in package_dir.rglob("*")
        if p.is_file()
    }
    files[f"{dist}/METADATA"] = b"Metadata-Version: 2.1\nName: toylab-models\nVersion: 1.0\n"
    files[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: berg-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist}/entry_points.txt"] = b"[berg.registries]\ntoylab = toylab_models:registry_path\n"
    files[f"{dist}/top_level.txt"] = b"toylab_models\n"
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = tmp_path / "toylab_models-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def test_an_installed_package_adds_its_registry(toy, reference, home, tmp_path):
    package = tmp_path / "src" / "toylab_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from pathlib import Path\n\n\ndef registry_path():\n    return Path(__file__).parent / 'models' / 'registry.yaml'\n"
    )
    _publish(toy, package / "models", home, namespace="toylab")  # the package's data: fragment, cards, artifact
    target = tmp_path / "site-packages"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(target),
         str(_wheel(tmp_path, package))],
        capture_output=True, text=True,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERG_")}
    env.update(PYTHONPATH=str(target), XDG_CONFIG_HOME=str(tmp_path / "cfg"), BERG_CACHE=str(tmp_path / "c2"))
    out = tmp_path / "pkg.npy"
    np.save(tmp_path / "images.npy", IMAGES)
    code = (
        "import sys, json, numpy as np, berg\n"
        "from berg.hub.registries import list_registries\n"
        "b = berg.BERG()\n"
        f"spec = b.registry.get('toylab/{MODEL}')\n"
        "m = b.get_encoding_model(spec.model_id, subject=1, device='cpu', backbone_weights='untrained')\n"
        "np.save(sys.argv[2], b.encode(m, np.load(sys.argv[1]), show_progress=False))\n"
        "print(json.dumps([spec.registry, spec.model_id, [r['name'] for r in list_registries()]]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "images.npy"), str(out)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    registry, model_id, names = json.loads(run.stdout.strip().splitlines()[-1])
    assert (registry, model_id) == ("package:toylab-models", f"toylab/{MODEL}@1")
    assert names == ["berg", "package:toylab-models"]
    np.testing.assert_array_equal(np.load(out), reference)
