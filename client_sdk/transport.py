"""Signed HTTP for the SDK, with bounded retries on transient failures.

:class:`SignedTransport` sends one request and returns the server's answer,
carrying on through what a server restart or a flaky network looks like:

* connection refused or reset, connect/read/write/pool timeouts and broken
  responses (``httpx.NetworkError``, ``httpx.TimeoutException``,
  ``httpx.RemoteProtocolError``) are retried;
* 5xx answers are retried; 429 and 503 honour the server's ``Retry-After``;
* 4xx answers are returned to the caller (``Client._request`` turns them into
  :class:`~client_sdk.errors.RequestRefused`): the server has decided, and
  asking again would get the same answer;
* a TLS certificate the client does not trust raises
  :class:`~client_sdk.errors.TrustError` at once: no retry can fix it.

Between attempts the transport sleeps with exponential backoff and full
jitter (a uniform draw between 0 and the current cap, AWS's "full jitter"),
so a fleet of clients whose server restarted does not come back in lockstep.
It gives up with :class:`~client_sdk.errors.ServerUnreachable` once
:attr:`RetryPolicy.give_up_after_s` has passed since the first failure.

Every attempt is signed again (spec: ``secagg_http/signing.py``) with a fresh
timestamp and nonce: the server accepts each nonce once, so a re-sent request
must not reuse the old headers. Re-posting a protocol message is safe: the
server answers an identical re-post of bytes it already accepted with 202.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from client_sdk.errors import ClientError, ServerUnreachable, Stopped, TrustError
from secagg_http.signing import sign_request

__all__ = ["RetryPolicy", "SignedTransport", "Signer", "json_body", "tls_verify"]

log = logging.getLogger("secagg.client")

# How often an interruptible wait asks ``stop()`` again.
STOP_POLL_S = 0.25
# Statuses whose Retry-After header the transport honours (RFC 9110 §10.2.3).
RETRY_AFTER_STATUSES = (429, 503)

# The transient failures of a request that a new attempt can get past.
_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

# Called with (method, path, request body, response) after every answered attempt.
Observer = Callable[[str, str, bytes, httpx.Response], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How the SDK retries a request that failed transiently.

    Attempt ``n + 1`` waits a uniformly random time in ``[0, cap_n]`` with
    ``cap_n = min(max_delay_s, initial_delay_s * multiplier ** (n - 1))``, or
    the server's ``Retry-After`` on a 429/503. The request fails with
    :class:`~client_sdk.errors.ServerUnreachable` when ``give_up_after_s``
    have passed since its first failed attempt (the last wait is shortened so
    that one more attempt is made at that moment).

    The defaults ride out a server restart or an outage of up to ten minutes,
    with at most 10 s between attempts once the backoff has grown. Each
    attempt is itself bounded by the HTTP client's timeout (``Client``'s
    ``timeout_s``), so a request fails at the latest ``give_up_after_s``
    plus one timeout after its first failure. ``Client.run()`` also uses
    the policy's backoff between check-ins while a task is paused.

    Attributes:
        initial_delay_s: the backoff cap after the first failure (> 0).
        multiplier: the growth of the cap per failure (>= 1).
        max_delay_s: the largest cap (>= initial_delay_s).
        give_up_after_s: the time budget from the first failure (>= 0; 0
            means a single attempt).
    """

    initial_delay_s: float = 0.5
    multiplier: float = 2.0
    max_delay_s: float = 10.0
    give_up_after_s: float = 600.0

    def __post_init__(self) -> None:
        values = (self.initial_delay_s, self.multiplier, self.max_delay_s, self.give_up_after_s)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"RetryPolicy values must be finite numbers, got {self}")
        if self.initial_delay_s <= 0:
            raise ValueError(f"RetryPolicy.initial_delay_s must be > 0, got {self.initial_delay_s}")
        if self.multiplier < 1:
            raise ValueError(f"RetryPolicy.multiplier must be >= 1, got {self.multiplier}")
        if self.max_delay_s < self.initial_delay_s:
            raise ValueError(
                f"RetryPolicy.max_delay_s ({self.max_delay_s}) must be >= initial_delay_s "
                f"({self.initial_delay_s})"
            )
        if self.give_up_after_s < 0:
            raise ValueError(
                f"RetryPolicy.give_up_after_s must be >= 0, got {self.give_up_after_s}"
            )

    @classmethod
    def never(cls) -> RetryPolicy:
        """A single attempt: the first transient failure raises ``ServerUnreachable``."""
        return cls(give_up_after_s=0.0)

    def cap(self, failures: int) -> float:
        """The largest wait after the ``failures``-th consecutive failure (1-based)."""
        # Past ~64 doublings the cap is max_delay_s anyway; avoid float overflow.
        exponent = min(max(failures - 1, 0), 64)
        return min(self.max_delay_s, self.initial_delay_s * self.multiplier**exponent)

    def delay(self, failures: int, rng: random.Random) -> float:
        """A full-jitter wait after the ``failures``-th consecutive failure."""
        return rng.uniform(0.0, self.cap(failures))


def tls_verify(verify: bool | str) -> bool | ssl.SSLContext:
    """``True`` (the system's CAs), ``False`` (no check), or a CA certificate file to trust.

    Raises:
        TrustError: the CA file is missing or holds no usable certificate.
    """
    if isinstance(verify, str):
        if not Path(verify).is_file():
            raise TrustError(f"CA certificate file {verify!r} does not exist")
        try:
            return ssl.create_default_context(cafile=verify)
        except ssl.SSLError as exc:
            raise TrustError(
                f"CA certificate file {verify!r} holds no usable PEM certificate: {exc}"
            ) from exc
    if verify is False:
        log.warning(
            "TLS certificate verification is disabled: anyone on the path can "
            "impersonate the server"
        )
    return verify


def _cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind a connect error, if that is what it is."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _trust_error(url: httpx.URL, err: ssl.SSLCertVerificationError) -> TrustError:
    host = url.host
    reason = err.verify_message or str(err)
    # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH (62) and X509_V_ERR_IP_ADDRESS_MISMATCH (64).
    if err.verify_code in (62, 64) or "mismatch" in reason.lower():
        return TrustError(
            f"the TLS certificate of {url.scheme}://{host}:{url.port} is not valid for the "
            f"host name {host!r} ({reason}): connect with a name or address the certificate "
            "lists (for a dev certificate, one given to `secagg dev-cert --host`), or "
            "reissue the certificate for this name"
        )
    return TrustError(
        f"the TLS certificate of {url.scheme}://{host}:{url.port} is not trusted ({reason}): "
        "give the CA certificate that issued it as verify='ca.pem' (CLI: --ca ca.pem; for a "
        "dev certificate, its cert.pem), and check that this is the right server"
    )


def _retry_after(response: httpx.Response, now: float) -> float | None:
    """The server's ``Retry-After`` in seconds (delta or HTTP date), or None."""
    if response.status_code not in RETRY_AFTER_STATUSES:
        return None
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _failure_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        code = body.get("error") if isinstance(body, dict) else None
    except ValueError:
        code = None
    return f"HTTP {response.status_code}" + (f" {code}" if code else "")


@dataclass(frozen=True)
class Signer:
    """The identity a transport signs requests with (``protocol.transport.sign_request``)."""

    client_id: int
    secret: bytes

    def headers(self, method: str, path: str, body: bytes, now: int) -> dict[str, str]:
        """Fresh authentication headers: this timestamp and a new random nonce."""
        # The nonce only has to be unique; os.urandom also makes it unpredictable.
        return sign_request(
            self.secret, self.client_id, method, path, now, os.urandom(16).hex(), body
        )


class SignedTransport:
    """Sends signed requests over one ``httpx.Client``, retrying transient failures.

    Thread-safe: the heartbeat thread and the round share one transport.

    Args:
        http: the HTTP client (its ``base_url``, TLS settings and timeouts apply).
        signer: the identity to sign with, or None for unauthenticated
            requests (enrolment).
        retry: the default retry policy of every request.
        clock: monotonic seconds (injectable for tests).
        sleep: blocking sleep (injectable for tests).
        wall_clock: Unix seconds, for the signed timestamp and HTTP dates.
        rng: the jitter source.
    """

    def __init__(
        self,
        http: httpx.Client,
        signer: Signer | None,
        retry: RetryPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.http = http
        self.signer = signer
        self.retry = retry or RetryPolicy()
        self.clock, self.sleep, self.wall_clock = clock, sleep, wall_clock
        # Jitter is not secret material (it only spreads retries out in time),
        # so the Mersenne Twister of `random` is fine here.
        self.rng = rng or random.Random()  # noqa: S311 (not secret: jitter)
        # Asked between attempts: when it returns True the wait ends with Stopped.
        self.stop: Callable[[], bool] | None = None
        # Sees every answered attempt (the client derives its round progress from it).
        self.observer: Observer | None = None
        self._lock = threading.Lock()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.retries = 0
        # Seconds spent between the start of a first failed attempt and the
        # answer that ended the failures (an outage ridden out), all requests.
        self.outage_s = 0.0

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> httpx.Response:
        """Send one request, retrying transient failures; return the first final answer.

        Args:
            method, path: the request line (``path`` relative to the base URL,
                with its query: it is what gets signed).
            body: the request body (signed by its SHA-256).
            content_type: its media type, if any.
            retry: this request's policy instead of the transport's default.

        Returns:
            The first answer below 500 other than 429, read completely; 4xx
            answers are returned, not raised (the caller types them).

        Raises:
            TrustError: the server's TLS certificate was refused (not retried).
            ServerUnreachable: connection failures or 5xx answers for the whole
                retry budget; the message gives the attempts, the time and the
                last failure.
            Stopped: ``self.stop()`` became true during a wait between attempts.
            ClientError: the URL cannot be used (e.g. an unsupported scheme).
        """
        policy = retry or self.retry
        first_failure: float | None = None
        attempt = 0
        while True:
            attempt += 1
            started = self.clock()
            headers: dict[str, str] = {}
            if self.signer is not None:
                # Re-signed on every attempt: the server accepts a nonce only once.
                headers = self.signer.headers(method, path, body, int(self.wall_clock()))
            if content_type:
                headers["content-type"] = content_type
            retry_after: float | None = None
            try:
                response = self.http.request(method, path, content=body, headers=headers)
            except _RETRYABLE_ERRORS as exc:
                cert = _cert_error(exc)
                if cert is not None:
                    raise _trust_error(self.http.base_url.join(path), cert) from exc
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                unreachable = True
            except httpx.TransportError as exc:  # UnsupportedProtocol, LocalProtocolError, ...
                raise ClientError(
                    f"cannot send {method} {path} to {self.http.base_url}: {exc} "
                    "(check the server URL)"
                ) from exc
            else:
                with self._lock:
                    self.bytes_sent += len(body)
                    self.bytes_received += len(response.content)
                if self.observer is not None:
                    self.observer(method, path, body, response)
                if response.status_code < 500 and response.status_code != 429:
                    if first_failure is not None:
                        with self._lock:
                            self.outage_s += self.clock() - first_failure
                    return response
                failure = _failure_text(response)
                unreachable = False
                retry_after = _retry_after(response, self.wall_clock())
            now = self.clock()
            if first_failure is None:
                first_failure = started  # the budget counts the failed attempt itself
            elapsed = now - first_failure
            remaining = policy.give_up_after_s - elapsed
            if remaining <= 0:
                log.warning(
                    "%s %s: giving up after %d attempt(s) over %.1f s: %s",
                    method,
                    path,
                    attempt,
                    elapsed,
                    failure,
                )
                what = "cannot reach" if unreachable else "no usable answer from"
                raise ServerUnreachable(
                    f"{what} {self.http.base_url} ({method} {path}): {failure}; gave "
                    f"up after {attempt} attempt(s) over {elapsed:.1f} s "
                    f"(RetryPolicy.give_up_after_s={policy.give_up_after_s:g})"
                )
            delay = retry_after if retry_after is not None else policy.delay(attempt, self.rng)
            delay = min(delay, remaining)
            with self._lock:
                self.retries += 1
            log.info(
                "%s %s: %s; attempt %d failed, retrying in %.1f s",
                method,
                path,
                failure,
                attempt,
                delay,
            )
            self.wait(delay)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, asking ``self.stop()`` every :data:`STOP_POLL_S`.

        Raises:
            Stopped: ``stop()`` returned True (before or during the wait).
        """
        deadline = self.clock() + seconds
        while True:
            if self.stop is not None and self.stop():
                raise Stopped("stop() asked the client to stop")
            left = deadline - self.clock()
            if left <= 0:
                return
            self.sleep(min(left, STOP_POLL_S) if self.stop is not None else left)

    def close(self) -> None:
        """Close the HTTP client's connections."""
        self.http.close()


def json_body(value: object) -> bytes:
    """``value`` as the UTF-8 JSON body of a request."""
    return json.dumps(value, separators=(",", ":")).encode()
