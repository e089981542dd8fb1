"""The task authority in the service: the offline tool, roster upload and relay, pinned SDK
clients (specs/authority-v1.md §6).

The attacker test plays a server (or an admin account it controls) that relays a roster
signed by a key of its own: every pinned client refuses before sending a protocol
message, so the round dies in R0 with nothing received from anyone.
"""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from client_sdk.client import Client, ClientError, ClientPolicy, PolicyViolation, enrol
from client_sdk.identity import Identity, IdentityError, parse_authority_key
from client_sdk.ledger import ContributionLedger
from client_sdk.models import FunctionModel
from protocol.authority import (
    CertificationError,
    CertificationFault,
    PinnedAuthority,
    Roster,
    sign_roster,
    task_scope,
    verify_roster,
)
from protocol.authority_vectors import authority_secret
from protocol.config import Mode, SessionConfig
from protocol.crypto import ed25519_public_key
from protocol.encoding import EvalSums
from secagg.authority_tool import (
    KEY_FILE,
    PUBLIC_FILE,
    AuthorityToolError,
    certify,
    export_roster,
    init_authority,
    load_secret,
)
from secagg.cli import main
from secagg_http.signing import CBOR_MEDIA_TYPE
from tests.server.helpers import admin, new_token, running_server, wait_rounds_finished

LENGTH = 8
COHORT = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with running_server(tmp_path_factory.mktemp("authority")) as url:
        yield url


def _task(url: str, name: str, **kw: object) -> int:
    body = {
        "name": name,
        "vector_length": LENGTH,
        "rounds": 1,
        # Five: the smallest cohort a default client accepts (spec §4.7).
        "clients_per_round": COHORT,
        "min_clients": COHORT,
        "graph": "complete",
        "mode": "active",
        # Generous for a loaded 2-core machine; the refused round waits out R0 only.
        "deadlines": {"R0": 15, "R1": 30, "R2": 30, "R3": 30, "R4": 30},
    } | kw
    with admin(url) as c:
        r = c.post("/v1/admin/tasks", json=body)
    assert r.status_code == 200, r.text
    return int(r.json()["id"])


def _upload(url: str, task_id: int, roster: bytes) -> httpx.Response:
    with admin(url) as c:
        return c.put(
            f"/v1/admin/tasks/{task_id}/roster",
            content=roster,
            headers={"content-type": CBOR_MEDIA_TYPE},
        )


def _client(url: str, ident: Identity, task_id: int, store: dict[str, np.ndarray]) -> Client:
    store["w"] = np.zeros(LENGTH, np.float32)
    model = FunctionModel(
        lambda: store["w"].copy(), lambda v: store.__setitem__("w", np.asarray(v, np.float32))
    )

    def train(_: object) -> int:
        store["w"] = store["w"] + np.float32(1 / 64)
        return 1

    return Client(
        url,
        ident,
        model,
        train,
        lambda m: EvalSums(0, 0, 0.0),
        task_id=task_id,
        # The default policy: certified identities required (a pinned client joins
        # active sessions only), at least five participants.
        policy=ClientPolicy(),
    )


def _run_all(clients: list[Client]) -> dict[int, object]:
    """Each client's first outcome state, or the exception that stopped it."""
    results: dict[int, object] = {}

    def run(i: int, c: Client) -> None:
        try:
            results[i] = c.run(rounds=1)[0].state
        except ClientError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return results


# -- the offline tool -------------------------------------------------------------------


def test_init_writes_a_private_key_and_refuses_to_replace_it(tmp_path: Path) -> None:
    public = init_authority(tmp_path / "a")
    assert stat.S_IMODE((tmp_path / "a" / KEY_FILE).stat().st_mode) == 0o600
    assert (tmp_path / "a" / PUBLIC_FILE).read_text().strip() == public.hex()
    assert ed25519_public_key(load_secret(tmp_path / "a")) == public
    with pytest.raises(AuthorityToolError):
        init_authority(tmp_path / "a")
    (tmp_path / "a" / KEY_FILE).chmod(0o644)
    with pytest.raises(AuthorityToolError, match="other users"):
        load_secret(tmp_path / "a")


def test_cli_certifies_and_exports_a_verifiable_roster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "authority"
    assert main(["authority", "init", str(d)]) == 0
    public = bytes.fromhex(capsys.readouterr().out.strip())
    ids = {u: Identity.generate() for u in (3, 1, 2)}
    for u, ident in ids.items():
        path = tmp_path / f"c{u}.key"
        ident.save(path)  # an identity file works as --identity-key
        args = ["authority", "certify", str(d), "--client-id", str(u), "--scope", "task/5"]
        assert main([*args, "--identity-key", str(path)]) == 0
    capsys.readouterr()
    # A client certified for another scope is not in task/5's roster.
    other = Identity.generate().public_key.hex()
    args = ["authority", "certify", str(d), "--client-id", "9", "--scope", "task/6"]
    assert main([*args, "--identity-key", other]) == 0
    out = tmp_path / "roster.cbor"
    args = ["authority", "export-roster", str(d), "--scope", "task/5", "--out", str(out)]
    assert main(args) == 0
    roster = verify_roster(out.read_bytes(), PinnedAuthority(public, "task/5", int(time.time())))
    assert roster.entries == tuple((u, ids[u].public_key) for u in (1, 2, 3))
    assert roster.serial == 1
    assert main(args) == 0
    assert Roster.decode(out.read_bytes()).serial == 2
    # Refusals are exit code 1 with a message, never a traceback.
    bad = ["authority", "export-roster", str(d), "--scope", "task/7", "--out", str(out)]
    assert main(bad) == 1
    bad = ["authority", "certify", str(d), "--client-id", "4", "--scope", "task 5"]
    assert main([*bad, "--identity-key", other]) == 1
    assert main(["authority", "certify", str(d), "--client-id", "4", "--scope", "t",
                 "--identity-key", "zz"]) == 1  # fmt: skip
    assert "error:" in capsys.readouterr().err


def test_two_clients_with_one_key_cannot_be_on_a_roster(tmp_path: Path) -> None:
    init_authority(tmp_path)
    key = Identity.generate().public_key
    now = int(time.time())
    certify(tmp_path, 1, key, "task/1", days=1, now=now)
    certify(tmp_path, 2, key, "task/1", days=1, now=now)
    with pytest.raises(CertificationError) as info:
        export_roster(tmp_path, "task/1", days=1, now=now)
    assert info.value.fault is CertificationFault.DUPLICATE_KEY


# -- identity files ------------------------------------------------------------------------


def test_identity_pins_the_authority_key(tmp_path: Path) -> None:
    pinned = ed25519_public_key(bytes(range(32)))
    ident = Identity.generate().with_enrolment(7, "https://x").with_authority(pinned)
    ident.save(tmp_path / "id.key")
    loaded = Identity.load(tmp_path / "id.key")
    assert loaded == ident and loaded.authority_key == pinned
    (tmp_path / "pub").write_text(pinned.hex() + "\n")
    assert parse_authority_key(str(tmp_path / "pub")) == pinned
    assert parse_authority_key(pinned.hex()) == pinned
    for bad in ("00" * 32, "01" + "00" * 31, "abc", "00" * 31):  # small order, short, not hex
        with pytest.raises(IdentityError):
            parse_authority_key(bad)
    raw = json.loads((tmp_path / "id.key").read_text())
    raw["authority_key"] = "00" * 32
    (tmp_path / "id.key").write_text(json.dumps(raw))
    with pytest.raises(IdentityError):
        Identity.load(tmp_path / "id.key")


def test_a_pinned_client_needs_a_roster_for_an_active_session() -> None:
    pinned = ed25519_public_key(bytes(range(32)))
    ident = Identity.generate().with_enrolment(1, "http://127.0.0.1:9").with_authority(pinned)
    keys = (ident.public_key, ed25519_public_key(bytes(32)), ed25519_public_key(b"\x01" * 32))
    config = SessionConfig((1, 2, 3), 2, 4, 16, bytes(32), Mode.ACTIVE, identity_keys=keys)
    client = Client("http://127.0.0.1:9", ident, [np.zeros(3, np.float32)], lambda m: 1, task_id=1)
    try:
        with pytest.raises(PolicyViolation, match="no roster"):
            client._check_roster(config, None)
        with pytest.raises(PolicyViolation, match="not hex"):
            client._check_roster(config, "zz")
        with pytest.raises(PolicyViolation, match="malformed"):
            client._check_roster(config, "00")
        # A downgrade: the server proposes a semi-honest session (unsigned keys).
        downgraded = SessionConfig((1, 2, 3), 2, 4, 16, bytes(32))
        with pytest.raises(PolicyViolation, match="only in active-mode"):
            client._check_roster(downgraded, None)
    finally:
        client.close()


# -- over HTTP -------------------------------------------------------------------------------


def test_cli_enrol_pins_the_authority_key(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    public = init_authority(tmp_path / "a")
    path = tmp_path / "client.key"
    args = ["client", "enrol", "--server", server, "--identity", str(path)]
    pub_file = str(tmp_path / "a" / PUBLIC_FILE)
    assert main([*args, "--token", new_token(server), "--authority-key", pub_file]) == 0
    ident = Identity.load(path)
    assert ident.authority_key == public and ident.client_id is not None
    assert f"identity public key {ident.public_key.hex()}" in capsys.readouterr().out
    # A key that is not an Ed25519 point is refused before anything is sent.
    assert main([*args, "--token", new_token(server), "--authority-key", "00" * 32]) == 1
    assert "authority key" in capsys.readouterr().err


def test_a_pinned_client_refuses_a_roster_older_than_one_it_accepted(tmp_path: Path) -> None:
    """Rollback: after serial 5 the server relays serial 4 (e.g. before a key was replaced)."""
    secret = authority_secret("root")
    ident = (
        Identity.generate()
        .with_enrolment(1, "http://127.0.0.1:9")
        .with_authority(ed25519_public_key(secret))
    )
    keys = (ident.public_key, ed25519_public_key(bytes(32)), ed25519_public_key(b"\x01" * 32))
    config = SessionConfig((1, 2, 3), 2, 4, 16, bytes(32), Mode.ACTIVE, identity_keys=keys)
    now = int(time.time())

    def roster(serial: int) -> str:
        entries = list(zip((1, 2, 3), keys, strict=True))
        return sign_roster(secret, "task/1", serial, now - 60, now + 600, entries).encode().hex()

    ledger = ContributionLedger(tmp_path / "client.key.ledger")
    model = [np.zeros(3, np.float32)]
    client = Client("http://127.0.0.1:9", ident, model, lambda m: 1, task_id=1, ledger=ledger)
    try:
        assert client._check_roster(config, roster(5))[0] is not None
        assert client.roster_min_serial == 5
        client._check_roster(config, roster(5))  # the same roster again is fine
        with pytest.raises(PolicyViolation, match="stale_serial"):
            client._check_roster(config, roster(4))
    finally:
        client.close()
    # A restarted client (a new process reading its ledger) still refuses serial 4.
    restarted = Client(
        "http://127.0.0.1:9",
        ident,
        [np.zeros(3, np.float32)],
        lambda m: 1,
        task_id=1,
        ledger=ContributionLedger(tmp_path / "client.key.ledger"),
    )
    try:
        with pytest.raises(PolicyViolation, match="stale_serial"):
            restarted._check_roster(config, roster(4))
        assert restarted._check_roster(config, roster(6))[0] is not None
    finally:
        restarted.close()
    # Another authority's rosters have a floor of their own.
    assert ContributionLedger(tmp_path / "client.key.ledger").roster_floor(bytes(32), "task/1") == 0


def test_roster_upload_is_typed_and_admin_only(server: str) -> None:
    task = _task(server, "upload")
    r = httpx.put(f"{server}/v1/admin/tasks/{task}/roster", content=b"x", timeout=30)
    assert r.status_code in (401, 403)
    with admin(server) as c:
        r = c.put(f"/v1/admin/tasks/{task}/roster", content=b"x")
        assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    r = _upload(server, task, b"\xff\x00garbage")
    assert r.status_code == 400 and r.json()["error"] == "bad_roster"

    secret = authority_secret("root")
    roster = sign_roster(secret, task_scope(task), 4, 10, 20, [(1, ed25519_public_key(b"k" * 32))])
    assert _upload(server, 10**12, roster.encode()).status_code == 404
    r = _upload(server, task, roster.encode())
    assert r.status_code == 200, r.text
    assert r.json() | {"authority_key_id": "?"} == {
        "task_id": task,
        "scope": task_scope(task),
        "serial": 4,
        "entries": 1,
        "authority_key_id": "?",
        "not_before": 10,
        "not_after": 20,
    }


def _enrol_pinned(url: str, authority_dir: Path, n: int) -> list[Identity]:
    pinned = bytes.fromhex((authority_dir / PUBLIC_FILE).read_text())
    return [enrol(url, new_token(url), name=f"p{i}", authority_key=pinned) for i in range(n)]


@pytest.mark.slow
def test_certified_active_round_completes_and_a_foreign_roster_is_refused(
    server: str, tmp_path: Path
) -> None:
    authority = tmp_path / "authority"
    init_authority(authority)
    idents = _enrol_pinned(server, authority, COHORT)
    now = int(time.time())

    # 1. The honest path: certified, uploaded, relayed, checked, exact.
    good_task = _task(server, "certified")
    for ident in idents:
        assert ident.client_id is not None
        certify(authority, ident.client_id, ident.public_key, task_scope(good_task), days=1,
                now=now)  # fmt: skip
    assert _upload(server, good_task, export_roster(
        authority, task_scope(good_task), days=1, now=now).encode()).status_code == 200  # fmt: skip
    stores: list[dict[str, np.ndarray]] = [{} for _ in idents]
    results = _run_all(
        [_client(server, i, good_task, s) for i, s in zip(idents, stores, strict=True)]
    )
    assert results == dict.fromkeys(range(COHORT), "completed")
    detail = wait_rounds_finished(server, good_task, 1, timeout=120)
    assert detail["rounds_detail"][0]["status"] == "completed"

    # 2. The server relays a roster of the same clients signed by a key of its own.
    bad_task = _task(server, "foreign-roster")
    rogue = tmp_path / "rogue"
    init_authority(rogue)
    for ident in idents:
        assert ident.client_id is not None
        certify(rogue, ident.client_id, ident.public_key, task_scope(bad_task), days=1, now=now)
    assert _upload(server, bad_task, export_roster(
        rogue, task_scope(bad_task), days=1, now=now).encode()).status_code == 200  # fmt: skip
    results = _run_all([_client(server, i, bad_task, {}) for i in idents])
    assert all(isinstance(r, PolicyViolation) and "wrong_authority" in str(r)
               for r in results.values()), results  # fmt: skip
    detail = wait_rounds_finished(server, bad_task, 1, timeout=120)
    round_ = detail["rounds_detail"][0]
    # The relayed roster is checked before training (specs/service-v1.md §3.1):
    # nobody reported ready, so no session was formed and nothing reached R0.
    assert round_["status"] == "aborted"
    assert round_["abort_reason"] == "too_few_trained"
    assert round_["stage_stats"]["training"]["participants"] == 0
    assert "R0" not in round_["stage_stats"] and round_["config"] is None
