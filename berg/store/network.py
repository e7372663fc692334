"""One policy for failed downloads: what went wrong, in words, and the two ways out.

Every fetch berg makes over the network -- objects of an S3 bucket, a PyPI wheel, a backbone's
pretrained weights -- ends, when it fails, in one line that names

* the file (and its size when known),
* the cause, classified from the exception chain: no network (connection refused, no route, name not
  resolved), a proxy that refuses, access denied (403), not found (404), a timeout, a server error;
* the two ways out: ``berg fetch ID --subject N`` where there is network, or a local copy used with
  ``berg_dir=`` (``--berg-dir``) / ``BERG_OFFLINE=1``.

Retrying is for transient faults only (timeouts, resets, 5xx, truncated bodies): a refused connection,
an unreachable network or an unresolvable host fails at once instead of after 16-20 s of back-off.
"""

from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass

from berg.errors import ArtifactError

__all__ = ["Cause", "FetchError", "classify", "fetch_error", "human_size", "ways_out"]

_NO_NETWORK_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.ENETDOWN,
    getattr(errno, "EADDRNOTAVAIL", -1),
}
_DNS_WORDS = (
    "Temporary failure in name resolution",
    "Name or service not known",
    "nodename nor servname",
    "getaddrinfo failed",
    "No address associated with hostname",
)
_SUBJECT_RE = re.compile(r"sub(?:ject)?[-_]?0*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Cause:
    """Why a download failed: ``kind`` (``no-network``, ``proxy``, ``forbidden``, ``not-found``,
    ``timeout``, ``server``, ``other``), a phrase for messages, and whether retrying may help."""

    kind: str
    text: str
    transient: bool


class FetchError(ArtifactError):
    """A file could not be downloaded; the one-line message names the file, size, cause and the ways out.

    Attributes ``file``, ``size`` (bytes or None), ``cause`` (:class:`Cause`) and ``where`` (URL) let the
    store add the model's own ``berg fetch`` command before the message reaches the user.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str,
        size: int | None,
        cause: Cause,
        where: str = "",
        ways: str = "",
        attempts: int | None = None,
    ):
        super().__init__(message)
        self.file, self.size, self.cause, self.where = file, size, cause, where
        self.ways, self.attempts = ways, attempts

    def for_model(self, model_id: str, key: str, size: int | None = None) -> FetchError:
        """The same failure, told for a file of ``model_id`` (its own ``berg fetch`` command, its size)."""
        m = _SUBJECT_RE.search(key)
        command = f"berg fetch {model_id} --subject {int(m.group(1))}" if m else f"berg fetch {model_id} --all"
        ways = self.ways.replace("berg fetch ID --subject N", command) if self.ways else ways_out(model_id, key)
        return fetch_error(
            f"{key} of {model_id}",
            self.cause,
            size=self.size if self.size is not None else size,
            where=self.where,
            ways=ways,
            attempts=self.attempts,
        )

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        todo += [
            e.__cause__,
            e.__context__,
            getattr(e, "reason", None) if isinstance(getattr(e, "reason", None), BaseException) else None,
        ]
        # botocore wraps the urllib3 error in `error`
        inner = getattr(e, "kwargs", {}).get("error") if isinstance(getattr(e, "kwargs", None), dict) else None
        if isinstance(inner, BaseException):
            todo.append(inner)
    return out


def classify(exc: BaseException, *, status: int | None = None) -> Cause:
    """Classify a download failure from its exception chain (or an HTTP ``status``)."""
    if status is None:
        for e in _chain(exc):
            code = getattr(e, "code", None)
            response = getattr(e, "response", None)
            if isinstance(code, int) and not isinstance(code, bool):
                status = code
            elif isinstance(response, dict):  # botocore's ClientError
                status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status is not None:
                break
    if status == 403:
        return Cause("forbidden", "access denied (HTTP 403)", False)
    if status == 404:
        return Cause("not-found", "not found (HTTP 404)", False)
    if status == 407:
        return Cause("proxy", "the proxy asks for credentials (HTTP 407)", False)
    if status in (429,) or (status is not None and status >= 500):
        return Cause("server", f"server error (HTTP {status})", True)
    names = {type(e).__name__ for e in _chain(exc)}
    texts = " ".join(str(e) for e in _chain(exc))
    if "ProxyConnectionError" in names or "Tunnel connection failed" in texts:
        return Cause("proxy", f"no network: the proxy refused the connection ({_short(texts)})", False)
    for e in _chain(exc):
        if isinstance(e, socket.gaierror) or type(e).__name__ in ("NameResolutionError",):
            return Cause("no-network", "no network (the host name cannot be resolved)", False)
        if isinstance(e, ConnectionRefusedError) or (isinstance(e, OSError) and e.errno in _NO_NETWORK_ERRNOS):
            what = "connection refused" if e.errno in (None, errno.ECONNREFUSED) else (e.strerror or "unreachable")
            return Cause("no-network", f"no network ({what.lower()})", False)
    if any(w in texts for w in _DNS_WORDS):
        return Cause("no-network", "no network (the host name cannot be resolved)", False)
    if "Failed to establish a new connection" in texts and ("Connection refused" in texts or "Errno 111" in texts):
        return Cause("no-network", "no network (connection refused)", False)
    if names & {"EndpointConnectionError"} and "refused" in texts.lower():
        return Cause("no-network", "no network (connection refused)", False)
    for e in _chain(exc):
        if isinstance(e, (TimeoutError, socket.timeout)) or "Timeout" in type(e).__name__ or "timed out" in str(e):
            return Cause("timeout", "timeout (no answer in time)", True)
    if names & {"EndpointConnectionError", "ConnectionClosedError", "ConnectionResetError", "ResponseStreamingError"}:
        return Cause("other", f"connection lost ({_short(texts)})", True)
    return Cause("other", _short(texts) or type(exc).__name__, True)


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def human_size(size: int | None) -> str:
    """``"801 MB"``, ``"353 kB"``; ``""`` when unknown."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def ways_out(model_id: str | None = None, key: str | None = None) -> str:
    """The two ways out of a failed fetch of a model's file, as a phrase."""
    if model_id:
        m = _SUBJECT_RE.search(key or "")
        command = f"berg fetch {model_id} --subject {int(m.group(1))}" if m else f"berg fetch {model_id} --all"
    else:
        command = "berg fetch ID --subject N"
    return (
        f"where there is network run `{command}` (with the same BERG_CACHE); or, with a local copy, pass "
        "berg_dir=DIR (--berg-dir, a copy of the bucket tree) or set BERG_OFFLINE=1 with the files in the cache"
    )


def fetch_error(
    file: str,
    cause: Cause,
    *,
    size: int | None = None,
    where: str = "",
    model_id: str | None = None,
    key: str | None = None,
    ways: str | None = None,
    attempts: int | None = None,
) -> FetchError:
    """The one-line error of a failed download (see the module docstring)."""
    sized = f" ({human_size(size)})" if size is not None else ""
    tried = f" after {attempts} attempts" if attempts and attempts > 1 else ""
    src = f" from {where}" if where and where != file else ""
    ways = ways or ways_out(model_id, key)
    message = f"cannot download {file}{sized}{src}: {cause.text}{tried}. Ways out: {ways}."
    return FetchError(
        " ".join(message.split()), file=file, size=size, cause=cause, where=where, ways=ways, attempts=attempts
    )
