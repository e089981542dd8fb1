"""What the SDK raises: one base class, one subclass per thing to do about it.

* :class:`ServerUnreachable`: the server could not be reached, or kept failing
  (5xx), for the whole retry budget (:class:`~client_sdk.transport.RetryPolicy`).
  Nothing to fix locally unless the URL is wrong; try again later.
* :class:`TrustError`: the server's TLS certificate was refused (unknown
  issuer, expired, or not valid for the host name). Never retried: fix the CA
  file or the host name, the message says which.
* :class:`RequestRefused`: the server answered with a typed 4xx
  (``{"error": code, "detail": text}``); ``status``, ``code`` and ``detail``
  say what it refused and why.
* :class:`PolicyViolation`: the server proposed a session this client's
  :class:`~client_sdk.client.ClientPolicy` does not accept; nothing was sent.
* :class:`Stopped`: ``stop()`` became true while the client waited to retry or
  to check in again (``Client.run()`` returns normally on it).
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error the SDK raises on purpose; the message says what happened."""


class ServerUnreachable(ClientError):
    """The server could not be reached, or kept failing, until the retry budget ran out."""


class TrustError(ClientError):
    """The server's TLS certificate was not accepted (issuer, validity or host name).

    Retrying cannot help: the message names what to fix (the CA file given as
    ``verify=``/``--ca``, or the host name in the server URL).
    """


class RequestRefused(ClientError):
    """The server refused a request with a 4xx answer (not retried).

    Attributes:
        status: the HTTP status code.
        code: the server's error code (``"error"`` of the JSON body), or
            ``"http_error"`` if the body was not the typed JSON error.
        detail: the server's explanation.
    """

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"server refused ({status} {code}): {detail}")
        self.status, self.code, self.detail = status, code, detail


class TaskPaused(RequestRefused):
    """409 ``task_paused`` at check-in: the task is paused; check in again later.

    Attributes:
        retry_after_s: the server's ``Retry-After`` in seconds, if it sent one.
    """

    def __init__(self, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(409, "task_paused", detail)
        self.retry_after_s = retry_after_s


class TaskFinished(ClientError):
    """410 ``task_finished`` at check-in: the task is over and will run no more rounds.

    Attributes:
        status: the task's final status (``completed``, ``failed``,
            ``cancelled`` or ``archived``) as the server reported it.
        detail: the server's explanation.
    """

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(f"the task is over ({status}): {detail}")
        self.status, self.detail = status, detail


class PolicyViolation(ClientError):
    """The server proposed a session this client's policy does not accept."""


class AlreadyContributed(PolicyViolation):
    """The round is on a base version this client already sent a masked input for.

    Nothing was downloaded, trained or sent. ``Client.run()`` declines such a
    round and checks in again (an honest server that lost track of a
    contribution, e.g. after a crash, offers it again once); ``participate()``
    raises it.
    """


class PrivacyBudgetSpent(PolicyViolation):
    """A DP round would take this client over its own privacy budget (specs/dp-v1.md §11).

    Computed from the client's own ledger, not from anything the server says.
    Nothing was downloaded, trained or sent; ``Client.run()`` stops taking part
    in the task; ``participate()`` raises it.
    """


class Stopped(ClientError):
    """``stop()`` became true while the client was waiting (a retry or a paused task)."""
