"""The garbage client of the chaos test: an enrolled, certified identity that sends junk.

Signed requests with random, malformed, oversized or replayed bodies, wrong
content types, bad signatures, out-of-range path numbers, and unsigned junk,
to every client endpoint of the old and the new round lifecycle. It checks in
once with a real (signed) check-in, so it may be selected for a round, and
then answers that round with junk only (a dropout, never a valid message).

Every answer is appended to ``<work>/garbage.log`` as a JSON line
``{"action", "method", "path", "status"}`` (``status`` 0: no answer, e.g. the
server was down). The harness counts a 500 as a failed invariant: bad input
gets a typed 4xx, a transient database error at most a 503.

Randomness here is test data, not key material: ``random.Random(seed)``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import cbor2
import httpx

from client_sdk.client import tls_verify
from client_sdk.identity import Identity

try:  # the signing scheme may move out of protocol/ (issue 7, item 9)
    from secagg_http.signing import CBOR_MEDIA_TYPE, sign_request
except ImportError:  # pragma: no cover - depends on the layout that lands
    from client_sdk.transport import (  # type: ignore[import-not-found,no-redef]
        CBOR_MEDIA_TYPE,
        sign_request,
    )


class Garbage:
    def __init__(
        self,
        server: str,
        ca: str,
        identity: Identity,
        task: int,
        work: Path,
        seed: int,
        max_body: int,
    ) -> None:
        self.http = httpx.Client(base_url=server, verify=tls_verify(ca), timeout=15)
        self.identity, self.task, self.work = identity, task, work
        self.rng = random.Random(seed)  # test data only
        self.max_body = max_body
        self.log = (work / "garbage.log").open("a")
        self.round_ids: set[int] = set()

    def record(self, action: str, method: str, path: str, status: int) -> None:
        self.log.write(
            json.dumps(
                {
                    "t": time.time(),
                    "action": action,
                    "method": method,
                    "path": path,
                    "status": status,
                }
            )
            + "\n"
        )
        self.log.flush()

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        assert self.identity.client_id is not None
        return sign_request(
            self.identity.secret,
            self.identity.client_id,
            method,
            path,
            int(time.time()),
            os.urandom(16).hex(),
            body,
        )

    def send(
        self,
        action: str,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        content_type: str | None = CBOR_MEDIA_TYPE,
        timeout: float | None = None,
    ) -> httpx.Response | None:
        h = dict(headers if headers is not None else self.headers(method, path, body))
        if content_type:
            h["content-type"] = content_type
        try:
            kw: dict[str, Any] = {"timeout": timeout} if timeout else {}
            r = self.http.request(method, path, content=body, headers=h, **kw)
        except httpx.HTTPError:
            self.record(action, method, path, 0)
            return None
        self.record(action, method, path, r.status_code)
        return r

    def junk(self, n: int | None = None) -> bytes:
        return self.rng.randbytes(n if n is not None else self.rng.randint(0, 2048))

    def cbor_junk(self) -> bytes:
        value = self.rng.choice(
            [
                {
                    "type": self.rng.randint(0, 9),
                    "sender": self.identity.client_id,
                    "session": self.junk(32),
                    "payload": [self.junk(8)] * self.rng.randint(0, 5),
                },
                [self.rng.randint(-(2**63), 2**63) for _ in range(5)],
                {"v": 1, "x": "y" * self.rng.randint(0, 300)},
                self.junk(64),
            ]
        )
        return bytes(cbor2.dumps(value))

    def round_paths(self, rid: int) -> list[tuple[str, str]]:
        return [
            ("POST", f"/v1/rounds/{rid}/messages"),
            ("GET", f"/v1/rounds/{rid}/messages/{self.rng.randint(0, 5)}"),
            ("POST", f"/v1/rounds/{rid}/heartbeat"),
            ("POST", f"/v1/rounds/{rid}/ready"),
            ("GET", f"/v1/rounds/{rid}/session"),
            ("GET", f"/v1/rounds/{rid}/outcome"),
        ]

    def one(self) -> None:
        """One junk request, chosen at random."""
        rid = self.rng.choice(sorted(self.round_ids)) if self.round_ids else self.rng.randint(1, 30)
        method, path = self.rng.choice(self.round_paths(rid))
        kind = self.rng.randrange(10)
        if kind == 0:
            self.send("random_body", method, path, self.junk())
        elif kind == 1:
            self.send("cbor_junk", "POST", f"/v1/rounds/{rid}/messages", self.cbor_junk())
        elif kind == 2:
            body = self.junk(self.max_body + 4096)
            self.send("oversized", "POST", f"/v1/rounds/{rid}/messages", body)
        elif kind == 3:  # the same signed request twice: the second is a replay
            body = self.cbor_junk()
            h = self.headers("POST", f"/v1/rounds/{rid}/messages", body)
            self.send("replay_first", "POST", f"/v1/rounds/{rid}/messages", body, headers=h)
            self.send("replay", "POST", f"/v1/rounds/{rid}/messages", body, headers=h)
        elif kind == 4:  # a valid signature over other bytes
            h = self.headers(method, path, b"something else")
            self.send("bad_signature", method, path, self.junk(100), headers=h)
        elif kind == 5:
            self.send(
                "wrong_type",
                "POST",
                f"/v1/rounds/{rid}/messages",
                self.junk(200),
                content_type=self.rng.choice(["application/json", "text/plain", "x/\x7f"]),
            )
        elif kind == 6:  # numbers out of every range
            big = self.rng.choice([0, -1, 2**63, 2**64 + 7, 10**30])
            self.send(
                "bad_number",
                self.rng.choice(["GET", "POST"]),
                self.rng.choice(
                    [
                        f"/v1/rounds/{big}/messages",
                        f"/v1/rounds/{rid}/messages/{big}",
                        f"/v1/tasks/{big}/checkin",
                        f"/v1/tasks/{self.task}/models/{big}",
                    ]
                ),
                b"",
            )
        elif kind == 7:  # unsigned junk, including to the public and admin surface
            path2 = self.rng.choice(
                [
                    "/v1/enrol",
                    "/v1/admin/tasks",
                    f"/v1/tasks/{self.task}/checkin",
                    f"/v1/admin/tasks/{self.task}/roster",
                ]
            )
            self.send(
                "unsigned",
                "POST",
                path2,
                self.junk(300),
                headers={"authorization": "Bearer " + self.junk(8).hex()},
                content_type="application/json",
            )
        elif kind == 8:  # a stale timestamp
            assert self.identity.client_id is not None
            h = sign_request(
                self.identity.secret,
                self.identity.client_id,
                method,
                path,
                int(time.time()) - 100_000,
                os.urandom(16).hex(),
                b"",
            )
            self.send("stale", method, path, b"", headers=h)
        else:
            self.send(
                "model_junk",
                "GET",
                f"/v1/tasks/{self.task}/models/"
                + self.rng.choice(["current", "0", "-1", "x" * 300, "1e9", "%00"]),
                b"",
            )

    def checkin_once(self, wait_s: float) -> None:
        """A genuine signed check-in (junk body): maybe selected; then junk in that round."""
        r = self.send(
            "checkin", "POST", f"/v1/tasks/{self.task}/checkin", self.junk(64), timeout=wait_s
        )
        if r is not None and r.status_code == 200:
            try:
                self.round_ids.add(int(r.json()["round_id"]))
            except (ValueError, KeyError, TypeError):
                self.record("bad_assignment", "POST", "checkin", r.status_code)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--identity", required=True)
    p.add_argument("--task", type=int, required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--max-body", type=int, required=True)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--checkin", action="store_true", help="check in once, genuinely")
    a = p.parse_args()
    work = Path(a.work)
    g = Garbage(a.server, a.ca, Identity.load(a.identity), a.task, work, a.seed, a.max_body)
    if a.checkin:
        g.checkin_once(wait_s=30)
    stop = work / "stop-garbage"
    while not stop.exists():
        g.one()
        time.sleep(a.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
