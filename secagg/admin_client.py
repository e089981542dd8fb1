"""A small Python admin client for the secagg server, over HTTPS (httpx).

>>> admin = AdminClient("https://agg.example:8443", token, verify="ca.pem")
>>> task = admin.create_task({"name": "mnist", "vector_length": 7850, ...})
>>> model = admin.pull_model(task.id, "current")   # hash-checked .npy bytes

Errors are typed: :class:`ServerUnreachable` (nothing answered: down, wrong
address, timeout), :class:`TlsTrustError` (something answered but its
certificate is not trusted: pass ``verify=`` the CA file), :class:`AdminRefused`
(the server answered with a 4xx/5xx; ``status``, ``code`` and ``detail`` as it
sent them), :class:`IntegrityError` (a download whose bytes do not match the
hash the server sent with them). All derive from :class:`AdminError`.
"""

from __future__ import annotations

import hashlib
import io
import ssl
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from secagg.task_spec import TaskView

__all__ = [
    "AdminClient",
    "AdminError",
    "AdminRefused",
    "IntegrityError",
    "PulledModel",
    "ServerUnreachable",
    "TlsTrustError",
    "TokenInfo",
]

CBOR_MEDIA_TYPE = "application/cbor"
MAX_MODEL_BYTES = 1 << 31  # a pulled model is held in memory; 2 GiB is 5e8 weights


class AdminError(Exception):
    """An admin request did not succeed; the message says what to do about it."""


class ServerUnreachable(AdminError):
    """No answer from the server (refused connection, DNS, timeout)."""


class TlsTrustError(AdminError):
    """The server answered but its TLS certificate is not trusted (or names another host)."""


class AdminRefused(AdminError):
    """The server answered with an error status."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"server refused ({status} {code}): {detail}")
        self.status, self.code, self.detail = status, code, detail


class IntegrityError(AdminError):
    """Downloaded bytes do not match the hash sent with them."""


@dataclass(frozen=True)
class TokenInfo:
    """A one-time enrolment token (shown once; only its hash is stored)."""

    token: str
    expires_at: str


@dataclass(frozen=True)
class PulledModel:
    """A model version as downloaded: the ``.npy`` bytes, checked, and their meaning."""

    task_id: int
    version: int
    body: bytes
    sha256: str = ""
    """SHA-256 of ``body`` (checked against the ``x-secagg-sha256`` header)."""

    @property
    def weights(self) -> npt.NDArray[np.float32]:
        """The flat float32 weight vector."""
        array = np.load(io.BytesIO(self.body), allow_pickle=False)
        return np.asarray(array, dtype=np.float32).reshape(-1)


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _raw_hash(body: bytes) -> str:
    """SHA-256 of the little-endian float32 values a .npy body holds."""
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:
        raise IntegrityError(f"the downloaded model is not a .npy file: {exc}") from exc
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<f4").tobytes()).hexdigest()


def _check_hashes(body: bytes, body_hash: str, announced: str, weights_hash: str) -> None:
    """Check a download against its headers (see the contract in docs/reference.md).

    ``x-secagg-sha256`` is the SHA-256 of the exact body, and
    ``x-secagg-weights-sha256`` that of the raw float32 values (the registry's
    content hash). A server from before that split sent only the latter, under
    the first name: it is recognised by the missing second header, and the
    values are then checked instead of the body bytes.
    """
    if not announced:
        raise IntegrityError("the server sent no x-secagg-sha256 header with the model")
    if weights_hash:
        ok = body_hash == announced and _raw_hash(body) == weights_hash
    else:
        ok = body_hash == announced or _raw_hash(body) == announced
    if not ok:
        raise IntegrityError(
            f"downloaded model (SHA-256 {body_hash}) does not match the hash the server "
            f"announced ({announced}): the download was corrupted or altered; pull again"
        )


class AdminClient:
    """Admin operations of one server, authenticated with the admin bearer token."""

    def __init__(
        self,
        server: str,
        token: str,
        verify: bool | str = True,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Args:
        server: base URL, e.g. ``https://agg.example:8443``.
        token: the admin token (``admin_token_file`` on the server).
        verify: ``True`` (system CAs), ``False`` (no check: testing only) or
            the path of a CA certificate file to trust.
        """
        if not server.startswith(("http://", "https://")):
            raise AdminError(f"server must be an http:// or https:// URL, got {server!r}")
        if not token:
            raise AdminError("an admin token is needed")
        ctx: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        self.server = server.rstrip("/")
        self._http = httpx.Client(
            base_url=self.server,
            headers={"authorization": f"Bearer {token}"},
            verify=ctx,
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------

    def _raise_for(self, r: httpx.Response) -> None:
        if r.is_success:
            return
        try:
            body = r.json()
            code, detail = str(body["error"]), str(body["detail"])
        except Exception:  # not the service's error shape (a proxy, say)
            code, detail = "http_error", r.text[:500] or r.reason_phrase
        raise AdminRefused(r.status_code, code, detail)

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        self._raise_for(r)
        return r

    def _transport_error(self, exc: httpx.TransportError) -> AdminError:
        tls = _tls_failure(exc)
        if tls is not None:
            return TlsTrustError(
                f"TLS with {self.server} failed: {tls}; if the server uses its own CA "
                "or a dev certificate, pass its certificate (--ca FILE)"
            )
        return ServerUnreachable(f"cannot reach {self.server}: {exc or type(exc).__name__}")

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._send(method, path, **kw).json()

    # -- tokens and tasks --------------------------------------------------------

    def create_token(self, label: str = "", ttl_s: float = 86400.0) -> TokenInfo:
        """A one-time enrolment token for one client."""
        body = self._json("POST", "/v1/admin/tokens", json={"label": label, "ttl_s": ttl_s})
        return TokenInfo(token=str(body["token"]), expires_at=str(body["expires_at"]))

    def create_task(self, spec: dict[str, Any]) -> TaskView:
        """Create a task from its fields (``secagg.task_spec.TaskCreate``)."""
        return TaskView.model_validate(self._json("POST", "/v1/admin/tasks", json=spec))

    def tasks(self, include_archived: bool = False) -> list[TaskView]:
        params = {"include_archived": "true"} if include_archived else {}
        return [
            TaskView.model_validate(t) for t in self._json("GET", "/v1/admin/tasks", params=params)
        ]

    def task(self, task_id: int) -> dict[str, Any]:
        """One task in detail: its fields, rounds, versions, quarantined clients."""
        detail = self._json("GET", f"/v1/admin/tasks/{int(task_id)}")
        assert isinstance(detail, dict)
        return detail

    def _action(self, task_id: int, action: str) -> TaskView:
        return TaskView.model_validate(
            self._json("POST", f"/v1/admin/tasks/{int(task_id)}/{action}")
        )

    def cancel(self, task_id: int) -> TaskView:
        return self._action(task_id, "cancel")

    def pause(self, task_id: int) -> TaskView:
        return self._action(task_id, "pause")

    def resume(self, task_id: int) -> TaskView:
        return self._action(task_id, "resume")

    def archive(self, task_id: int) -> TaskView:
        return self._action(task_id, "archive")

    def upload_roster(self, task_id: int, roster: bytes) -> dict[str, Any]:
        """Upload the task authority's signed roster (``secagg authority export-roster``)."""
        out = self._json(
            "PUT",
            f"/v1/admin/tasks/{int(task_id)}/roster",
            content=roster,
            headers={"content-type": CBOR_MEDIA_TYPE},
        )
        assert isinstance(out, dict)
        return out

    # -- models ----------------------------------------------------------------

    def pull_model(self, task_id: int, ref: str | int = "current") -> PulledModel:
        """Download a version (number, ``current`` or a tag) and check its hash.

        Raises:
            IntegrityError: the body's SHA-256 differs from ``x-secagg-sha256``
                (or the header is missing).
        """
        ref_text = str(ref)
        if not ref_text or "/" in ref_text or len(ref_text) > 200:
            raise AdminError(f"bad version reference {ref_text!r}")
        path = f"/v1/admin/tasks/{int(task_id)}/versions/{ref_text}/weights"
        digest = hashlib.sha256()
        chunks: list[bytes] = []
        size = 0
        try:
            with self._http.stream("GET", path) as r:
                if not r.is_success:
                    r.read()
                    self._raise_for(r)
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > MAX_MODEL_BYTES:
                        raise AdminError(f"model larger than {MAX_MODEL_BYTES} bytes")
                    digest.update(chunk)
                    chunks.append(chunk)
                expected = r.headers.get("x-secagg-sha256", "")
                weights_hash = r.headers.get("x-secagg-weights-sha256", "")
                version = r.headers.get("x-secagg-version", "")
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        got = digest.hexdigest()
        body = b"".join(chunks)
        _check_hashes(body, got, expected.lower(), weights_hash.lower())
        if not version.isdigit():
            raise AdminError(f"bad x-secagg-version header {version!r}")
        return PulledModel(task_id=int(task_id), version=int(version), body=body, sha256=got)
