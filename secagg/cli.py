"""The ``secagg`` command line: serve, tokens, status, certificates, authority, demo, bench,
vectors."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from protocol import FixedPointEncoding, Round, RoundAborted, SystemRandom
from protocol.testing import make_config, simulate


def _demo(args: argparse.Namespace) -> int:
    """A simulated secure aggregation of float model updates, with dropouts."""
    n, length = args.clients, args.length
    encoding = FixedPointEncoding(clip=1.0, scale=float(1 << 16), max_weight=1000)
    bits = encoding.required_bit_width(n)
    config = make_config(n, length + 1, bit_width=bits, seed=b"demo", context=encoding.context())
    data = np.random.default_rng(args.seed)  # the updates are data, not secrets
    updates = [data.normal(0, 0.3, length).astype(np.float32) for _ in range(n)]
    weights = [int(w) for w in data.integers(10, 1000, n)]
    rng = SystemRandom()
    encoded = [encoding.encode(x, w, rng) for x, w in zip(updates, weights, strict=True)]
    dropouts = {2: Round.R1_SHARE_KEYS, 5: Round.R2_MASKED_INPUT_COLLECTION, 7: Round.R4_UNMASKING}
    t0 = time.perf_counter()
    try:
        sim = simulate(config, encoded, dropouts=dropouts)
    except RoundAborted as exc:
        print(f"round aborted: {exc}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    mean, total_weight = encoding.decode(sim.aggregate)
    survivors = sim.result.survivors
    exact = np.zeros(length + 1, np.int64)
    for u in survivors:
        exact += encoded[u - 1]
    plain = sum(
        weights[u - 1] * np.clip(updates[u - 1].astype(np.float64), -1, 1) for u in survivors
    ) / sum(weights[u - 1] for u in survivors)
    print(f"secure aggregation of {n} clients x {length} parameters, {bits}-bit arithmetic")
    print("  dropped: client 2 before sharing keys, 5 before masking, 7 before unmasking")
    print(f"  survivors in the sum: {list(survivors)}")
    print(f"  total weight (computed inside the secure sum): {total_weight}")
    print(
        f"  unmasked sum == sum of quantised inputs: {bool(np.array_equal(sim.aggregate, exact))}"
    )
    print(
        f"  max |secure weighted mean - plaintext weighted mean|: "
        f"{float(np.max(np.abs(mean - plain))):.2e}"
    )
    print(
        f"  wall {wall:.3f} s, server {sim.server_seconds:.3f} s, "
        f"bytes per client {int(np.mean(list(sim.bytes_sent.values())))}"
    )
    return 0


def _from_checkout(module: str) -> Any:
    """A module of the source checkout (``examples/``, ``benchmarks/``), which are not installed."""
    import importlib

    root = module.split(".", 1)[0]
    if (Path.cwd() / root / "__init__.py").is_file() and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # console scripts do not put the cwd on the path
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise SystemExit(
            f"{module} is part of the source checkout, not of the installed package: run this "
            "command from the repository's root (e.g. `make demo`, `make bench`)"
        ) from exc


def _bench(args: argparse.Namespace) -> int:
    run_bench = _from_checkout("benchmarks.bench").run_bench

    report = run_bench(
        clients=args.clients,
        length=args.length,
        dropout=args.dropout,
        graph=args.graph,
        degree=args.degree,
        threshold=args.threshold,
        mode=args.mode,
        drop_round=args.drop_round,
        bit_width=args.bit_width,
        seed=args.seed,
    )
    print(json.dumps(report))
    return 0 if report["exact"] else 1


def _vectors(args: argparse.Namespace) -> int:
    """Write the transcript test vectors to DIR, or check DIR against them."""
    from pathlib import Path

    from protocol.authority_vectors import check_authority_vectors, write_authority_vectors
    from protocol.dp_vectors import check_dp_vectors, write_dp_vectors
    from protocol.testvectors import check_vector, dumps_vector, generate_all

    directory = Path(args.dir)
    generated = {name: dumps_vector(v).encode() for name, v in generate_all().items()}
    if args.action == "write":
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in sorted(generated.items()):
            (directory / name).write_bytes(data)
        print(f"wrote {len(generated)} vectors to {directory}")
        print(f"wrote {write_authority_vectors(directory)} vectors to {directory}/authority")
        print(f"wrote {write_dp_vectors(directory)} vectors to {directory}/dp")
        for path in sorted(directory.glob("*.json")):
            if path.name not in generated:
                print(f"warning: {path} is not a generated vector", file=sys.stderr)
        return 0

    if not directory.is_dir():
        print(f"error: {directory} is not a directory", file=sys.stderr)
        return 1
    on_disk = {p.name: p.read_bytes() for p in sorted(directory.glob("*.json"))}
    problems: list[str] = [] if on_disk else [f"no vector files in {directory}"]
    if not args.replay_only:
        problems += [f"missing: {n}" for n in sorted(generated.keys() - on_disk.keys())]
        problems += [f"extra: {n}" for n in sorted(on_disk.keys() - generated.keys())]
        for name in sorted(generated.keys() & on_disk.keys()):
            if on_disk[name] != generated[name]:
                ours, theirs = generated[name].splitlines(), on_disk[name].splitlines()
                line = next(
                    (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                    min(len(ours), len(theirs)),
                )
                problems.append(f"differs: {name} (first at line {line + 1})")
    for name, data in on_disk.items():
        try:
            check_vector(json.loads(data))
        except Exception as exc:  # report every file, whatever is wrong with it
            problems.append(f"replay failed: {name}: {exc}")
    problems += check_authority_vectors(directory, replay_only=args.replay_only)
    problems += check_dp_vectors(directory, replay_only=args.replay_only)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(
        f"{len(on_disk)} vector files in {directory} replayed; "
        f"{'OK' if not problems else f'{len(problems)} problem(s)'}"
    )
    return 1 if problems else 0


app = typer.Typer(
    name="secagg",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Secure aggregation for federated learning: server, tools and benchmarks.",
)
token_app = typer.Typer(no_args_is_help=True, help="One-time enrolment tokens.")
client_app = typer.Typer(no_args_is_help=True, help="Client-side helpers.")
authority_app = typer.Typer(
    no_args_is_help=True,
    help="The offline task authority: certify client identity keys, sign rosters.",
)
task_app = typer.Typer(no_args_is_help=True, help="Training tasks (over the admin API).")
model_app = typer.Typer(no_args_is_help=True, help="Model versions (over the admin API).")
app.add_typer(token_app, name="token")
app.add_typer(task_app, name="task")
app.add_typer(model_app, name="model")
app.add_typer(client_app, name="client")
app.add_typer(authority_app, name="authority")

DbOption = Annotated[
    str | None, typer.Option("--database-url", help="SQLAlchemy URL (default: settings)")
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML settings file", exists=True)
]


def _settings(config: Path | None = None, **overrides: Any) -> Any:
    from secagg.settings import Settings

    return Settings.load(config, **overrides)


ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server", envvar="SECAGG_SERVER", help="server URL, e.g. https://host:8443 (required)"
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="SECAGG_ADMIN_TOKEN",
        help="admin token (or --token-file, or SECAGG_ADMIN_TOKEN)",
        show_envvar=True,
    ),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        envvar="SECAGG_ADMIN_TOKEN_FILE",
        help="file holding the admin token (the server's admin_token_file, mode 600)",
        show_envvar=True,
    ),
]
CaOption = Annotated[
    Path | None,
    typer.Option(
        "--ca",
        envvar="SECAGG_CA",
        help="CA certificate to trust (e.g. a dev certificate)",
        show_envvar=True,
    ),
]


def _admin(server: str | None, token: str | None, token_file: Path | None, ca: Path | None) -> Any:
    """An AdminClient for the given server; a usage error (exit 2) if anything is missing.

    Admin commands work over HTTP only: there is no database fallback, so a
    forgotten --server is an error, not a silent ./secagg.db.
    """
    from secagg.admin_client import AdminClient, AdminError
    from secagg.admin_token import AdminTokenError, read_admin_token_file

    if not server:
        raise typer.BadParameter(
            "give the server's URL with --server URL (or SECAGG_SERVER); admin commands "
            "talk to a running server, never to a database file",
            param_hint="--server",
        )
    if token_file is not None and token is None:
        try:
            token = read_admin_token_file(token_file)
        except AdminTokenError as exc:
            raise typer.BadParameter(str(exc), param_hint="--token-file") from exc
    if not token:
        raise typer.BadParameter(
            "give the admin token: --token-file FILE (the server's admin_token_file), "
            "--token TOKEN or SECAGG_ADMIN_TOKEN",
            param_hint="--token-file",
        )
    if ca is not None and not ca.is_file():
        raise typer.BadParameter(f"no such file: {ca}", param_hint="--ca")
    try:
        return AdminClient(server, token, verify=str(ca) if ca is not None else True)
    except AdminError as exc:
        raise typer.BadParameter(str(exc), param_hint="--server") from exc


def _admin_call(fn: Any, *args: Any) -> Any:
    from secagg.admin_client import AdminError

    try:
        return fn(*args)
    except AdminError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    database_url: DbOption = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", exists=True)] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", exists=True)] = None,
    admin_token: Annotated[str | None, typer.Option("--admin-token")] = None,
    standby: Annotated[
        bool,
        typer.Option(
            "--standby",
            help="if another server is the database's writer, wait and take over when it "
            "stops (default: refuse to start)",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Run the aggregation server (the only writer of its database: see secagg/writer_lock.py).

    Exit status 3: another server holds the database's writer lock; 4: the lock
    was lost while serving (the server stops at once, without further writes).
    """
    from secagg.db import DatabaseOptions, is_transient
    from secagg.logs import configure_logging
    from secagg.memory import tune_allocator
    from secagg.writer_lock import EXIT_WRITER_LOCK_HELD, WriterLockHeld, acquire_writer_lock

    tune_allocator()  # model-sized buffers go back to the system when freed
    settings = _settings(
        config,
        host=host,
        port=port,
        database_url=database_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
        admin_token=admin_token,
        standby=standby or None,
    )
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    configure_logging(settings.log_level, settings.log_json)
    # The writer lock comes first: nothing may touch the database's rounds (the
    # app marks running ones interrupted at start) while another server runs them.
    try:
        writer_lock = acquire_writer_lock(
            settings.database_url,
            DatabaseOptions.from_settings(settings),
            standby=settings.standby,
            poll_s=settings.standby_poll_s,
            check_s=settings.writer_lock_check_s,
        )
    except WriterLockHeld as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_WRITER_LOCK_HELD) from exc
    except Exception as exc:
        if not is_transient(exc):
            raise
        typer.echo(f"error: cannot reach the database to take its writer lock: {exc}", err=True)
        raise typer.Exit(1) from exc
    try:
        _serve_locked(settings)
    finally:
        if writer_lock is not None:
            writer_lock.release()


def _serve_locked(settings: Any) -> None:
    """Build the application and run uvicorn until it stops (the writer lock is held)."""
    import uvicorn

    from secagg.admin_token import AdminTokenError
    from secagg.app import create_app
    from secagg.limits import ConnectionLimits, guarded_h11_protocol

    try:
        application = create_app(settings)
    except AdminTokenError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if settings.admin_token is None:
        typer.echo(f"admin token in {settings.admin_token_file.resolve()} (mode 600)", err=True)
    limits = ConnectionLimits(
        max_connections=settings.max_connections,
        max_per_peer=settings.max_connections_per_ip,
        header_timeout_s=settings.header_timeout_s,
    )
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        access_log=False,
        # Long-polling clients must not hold a shutdown (or a restart) open.
        timeout_graceful_shutdown=5,
        # Header deadline and connection caps (global and per peer) instead of
        # uvicorn's limit_concurrency, which answers 503 to everyone when full.
        http=guarded_h11_protocol(limits),
        timeout_keep_alive=settings.keepalive_timeout_s,
        backlog=min(settings.max_connections, 4096),
    )


@token_app.command("create")
def token_create(
    server: ServerOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    ca: CaOption = None,
    label: Annotated[str, typer.Option(help="a note stored with the token")] = "",
    ttl: Annotated[float, typer.Option(help="lifetime in seconds")] = 86400.0,
) -> None:
    """Issue a one-time enrolment token (printed once; only its hash is stored)."""
    with _admin(server, token, token_file, ca) as admin:
        info = _admin_call(admin.create_token, label, ttl)
    typer.echo(info.token)
    typer.echo(f"expires {info.expires_at}", err=True)


@app.command("dev-cert")
def dev_cert(
    out_dir: Annotated[Path, typer.Option(help="where to write cert.pem and key.pem")] = Path("."),
    host: Annotated[list[str] | None, typer.Option(help="DNS name or IP (repeatable)")] = None,
    days: Annotated[int, typer.Option(help="validity")] = 30,
) -> None:
    """Write a self-signed certificate and key for trying TLS out (not for production)."""
    from protocol.crypto.x509 import self_signed_certificate

    cert, key = self_signed_certificate(host or ["localhost", "127.0.0.1"], days)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cert.pem").write_bytes(cert)
    key_path = out_dir / "key.pem"
    key_path.touch(mode=0o600)
    key_path.write_bytes(key)
    typer.echo(f"wrote {out_dir / 'cert.pem'} and {key_path}")


@app.command()
def status(
    server: ServerOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    ca: CaOption = None,
    task: Annotated[int | None, typer.Option("--task", help="one task in detail")] = None,
    all_tasks: Annotated[bool, typer.Option("--all", help="also list archived tasks")] = False,
) -> None:
    """Tasks, their rounds and model versions, from the server's admin API."""
    from secagg.admin_status import render_task, render_tasks

    with _admin(server, token, token_file, ca) as admin:
        if task is None:
            typer.echo(render_tasks(_admin_call(admin.tasks, all_tasks)))
        else:
            typer.echo(render_task(_admin_call(admin.task, task)))


TaskId = Annotated[int, typer.Argument(help="task id", min=1)]


@task_app.command("create")
def task_create(
    task_file: Annotated[Path, typer.Argument(help="TOML file of task fields", exists=True)],
    init: Annotated[
        Path | None,
        typer.Option(
            "--init", exists=True, help="initial model: a .pt state_dict, .safetensors or .npy"
        ),
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    ca: CaOption = None,
) -> None:
    """Create a task from a TOML file (see docs/reference.md for every field)."""
    from secagg.model_files import ModelFileError
    from secagg.task_files import TaskFileError, task_request

    try:
        spec = task_request(task_file, init)
    except (TaskFileError, ModelFileError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    with _admin(server, token, token_file, ca) as admin:
        created = _admin_call(admin.create_task, spec)
    typer.echo(created.id)
    typer.echo(
        f"created task {created.id} {created.name!r}: {created.vector_length} weights, "
        f"{created.rounds} rounds of {created.clients_per_round} clients",
        err=True,
    )


def _task_action(action: str, task_id: int, *auth: Any) -> None:
    with _admin(*auth) as admin:
        view = _admin_call(getattr(admin, action), task_id)
    typer.echo(f"task {view.id} {view.name!r}: {view.status}")


_TASK_ACTIONS = {
    "cancel": "Cancel a task for good (a running round is aborted).",
    "pause": "Pause a task: a running round finishes, no new one starts.",
    "resume": "Resume a paused or failed task.",
    "archive": "Archive a finished task (hidden from `secagg status` unless --all).",
}


def _register_task_action(action: str, doc: str) -> None:
    """``secagg task <action> N``: one admin status transition over HTTP."""

    def command(
        task_id: TaskId,
        server: ServerOption = None,
        token: TokenOption = None,
        token_file: TokenFileOption = None,
        ca: CaOption = None,
    ) -> None:
        _task_action(action, task_id, server, token, token_file, ca)

    command.__doc__ = doc
    command.__name__ = f"task_{action}"
    task_app.command(action)(command)


for _action, _doc in _TASK_ACTIONS.items():
    _register_task_action(_action, _doc)


@task_app.command("upload-roster")
def task_upload_roster(
    task_id: TaskId,
    roster: Annotated[
        Path, typer.Argument(help="roster file from `secagg authority export-roster`", exists=True)
    ],
    server: ServerOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    ca: CaOption = None,
) -> None:
    """Upload the task authority's signed roster (clients check it against the key they pinned)."""
    with _admin(server, token, token_file, ca) as admin:
        out = _admin_call(admin.upload_roster, task_id, roster.read_bytes())
    typer.echo(f"roster serial {out['serial']} with {out['entries']} clients for task {task_id}")


@model_app.command("pull")
def model_pull(
    task: Annotated[int, typer.Option("--task", help="task id", min=1)],
    out: Annotated[Path, typer.Option("-o", "--out", help="file to write")],
    version: Annotated[
        str, typer.Option("--version", help="current, a version number or a tag")
    ] = "current",
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="pt | safetensors | npy (default: from the -o suffix)"),
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    ca: CaOption = None,
) -> None:
    """Download a model version (hash-checked) as a .pt / .safetensors state_dict or a .npy."""
    from secagg.model_files import ModelFileError, require_format, write_model_file

    if fmt is None:
        by_suffix = {".pt": "pt", ".pth": "pt", ".safetensors": "safetensors", ".npy": "npy"}
        fmt = by_suffix.get(out.suffix.lower())
        if fmt is None:
            raise typer.BadParameter(
                f"cannot tell the format from {out.name!r}: give --format pt|safetensors|npy",
                param_hint="--format",
            )
    if fmt not in ("pt", "safetensors", "npy"):
        raise typer.BadParameter("use pt, safetensors or npy", param_hint="--format")
    try:
        require_format(fmt)
    except ModelFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    with _admin(server, token, token_file, ca) as admin:
        pulled = _admin_call(admin.pull_model, task, version)
        layout = _admin_call(admin.task, task).get("model_layout")
    try:
        write_model_file(out, pulled.weights, layout, fmt)  # type: ignore[arg-type]
    except ModelFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"task {task} version {pulled.version} (sha256 {pulled.sha256}) written to {out}")


@app.command("report")
def report(
    task: Annotated[int, typer.Option("--task", help="task id")],
    server: Annotated[str, typer.Option(help="server URL, e.g. https://host:8443")],
    out: Annotated[Path, typer.Option("-o", "--out", help="directory to write into")] = Path("."),
    token: Annotated[
        str | None,
        typer.Option(envvar="SECAGG_ADMIN_TOKEN", help="admin token (default: --token-file)"),
    ] = None,
    token_file: Annotated[Path, typer.Option(help="file holding the admin token")] = Path(
        "secagg-admin-token"
    ),
    ca: Annotated[Path | None, typer.Option(help="CA certificate to trust")] = None,
) -> None:
    """Draw a task's accuracy, loss, dropouts and bytes per round (PNG and HTML)."""
    import httpx

    from secagg.report import render_report

    if token is None:
        if not token_file.is_file():
            typer.echo(f"error: no --token and no token file {token_file}", err=True)
            raise typer.Exit(1)
        token = token_file.read_text().strip()
    try:
        response = httpx.get(
            f"{server.rstrip('/')}/v1/admin/tasks/{task}",
            headers={"authorization": f"Bearer {token}"},
            verify=str(ca) if ca else True,
            timeout=60,
        )
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {server}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if response.status_code != 200:
        typer.echo(f"error: {response.status_code} {response.text[:300]}", err=True)
        raise typer.Exit(1)
    for path in render_report(response.json(), out):
        typer.echo(str(path))


@client_app.command("enrol")
def client_enrol(
    server: Annotated[str, typer.Option(help="server URL, e.g. https://host:8443")],
    token: Annotated[str, typer.Option(help="one-time enrolment token")],
    identity: Annotated[Path, typer.Option(help="identity file to write")] = Path("client.key"),
    name: Annotated[str, typer.Option(help="a name for this client")] = "",
    ca: Annotated[Path | None, typer.Option(help="CA certificate to trust")] = None,
    authority_key: Annotated[
        str | None,
        typer.Option(
            "--authority-key",
            help="the task authority's public key to pin (HEX or a FILE holding it)",
        ),
    ] = None,
) -> None:
    """Create an identity key and enrol it with a token."""
    from client_sdk.client import ClientError, enrol
    from client_sdk.identity import IdentityError, parse_authority_key

    try:
        pinned = parse_authority_key(authority_key) if authority_key is not None else None
        ident = enrol(
            server, token, name=name, verify=str(ca) if ca else True, authority_key=pinned
        )
    except (ClientError, IdentityError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    ident.save(identity)
    typer.echo(f"enrolled as client {ident.client_id}; identity in {identity} (mode 600)")
    typer.echo(f"identity public key {ident.public_key.hex()}")


AuthorityDir = Annotated[Path, typer.Argument(help="the authority's directory")]


def _authority_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from protocol.authority import CertificationError
    from secagg.authority_tool import AuthorityToolError

    try:
        return fn(*args, **kwargs)
    except (AuthorityToolError, CertificationError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@authority_app.command("init")
def authority_init(directory: AuthorityDir) -> None:
    """Create an authority key (DIR/authority.key, mode 600) and print its public key."""
    from secagg.authority_tool import PUBLIC_FILE, init_authority

    public = _authority_call(init_authority, directory)
    typer.echo(public.hex())
    typer.echo(f"public key in {directory / PUBLIC_FILE}; keep {directory} offline", err=True)


@authority_app.command("certify")
def authority_certify(
    directory: AuthorityDir,
    client_id: Annotated[int, typer.Option("--client-id", help="the id the server assigned")],
    identity_key: Annotated[
        str, typer.Option("--identity-key", help="HEX, or a FILE (hex or identity file)")
    ],
    scope: Annotated[str, typer.Option(help="task/<id> or a cohort name")],
    days: Annotated[float, typer.Option(help="validity")] = 365.0,
) -> None:
    """Certify a client's identity key for a scope; print the certificate (hex)."""
    from secagg.authority_tool import certify, parse_identity_key

    key = _authority_call(parse_identity_key, identity_key)
    cert = _authority_call(
        certify, directory, client_id, key, scope, days=days, now=int(time.time())
    )
    typer.echo(cert.encode().hex())


@authority_app.command("export-roster")
def authority_export_roster(
    directory: AuthorityDir,
    scope: Annotated[str, typer.Option(help="task/<id> or a cohort name")],
    out: Annotated[Path, typer.Option(help="roster file to write (CBOR)")],
    days: Annotated[float, typer.Option(help="validity")] = 30.0,
) -> None:
    """Sign a roster of every certificate of SCOPE valid now, for an admin to upload."""
    from secagg.authority_tool import export_roster

    roster = _authority_call(export_roster, directory, scope, days=days, now=int(time.time()))
    out.write_bytes(roster.encode())
    typer.echo(
        f"roster serial {roster.serial} for {roster.scope}: {len(roster.entries)} clients, "
        f"written to {out}; upload: PUT /v1/admin/tasks/<id>/roster (application/cbor)"
    )


@app.command("demo")
def demo_cmd(
    simulated: Annotated[
        bool, typer.Option("--simulated", help="only one in-memory round (no server, no training)")
    ] = False,
    rounds: Annotated[int, typer.Option(help="FedAvg rounds")] = 20,
    out_dir: Annotated[Path, typer.Option(help="report folder")] = Path("demo-output"),
    clients: int = 10,
    length: int = 10_000,
    seed: int = 0,
    dp: Annotated[
        bool,
        typer.Option(
            "--dp",
            help="distributed differential privacy: a DP task through the service, then "
            "accuracy against epsilon (specs/dp-v1.md)",
        ),
    ] = False,
) -> None:
    """Federated training with secure aggregation, end to end (real server and clients)."""
    if dp:
        raise typer.Exit(_from_checkout("examples.dp.run").run_dp_demo(out_dir))
    if simulated:
        raise typer.Exit(_demo(argparse.Namespace(clients=clients, length=length, seed=seed)))
    run_demo = _from_checkout("examples.digits.run").run_demo

    summary = run_demo(out_dir, rounds=rounds)
    gap = summary["accuracy_gap_points"]
    raise typer.Exit(0 if gap is not None and gap <= 0.5 else 1)


@app.command("bench")
def bench_cmd(
    clients: int = 50,
    length: int = 100_000,
    dropout: float = 0.1,
    graph: Annotated[str, typer.Option(help="complete | harary")] = "complete",
    degree: int | None = None,
    threshold: int | None = None,
    mode: Annotated[str, typer.Option(help="semi-honest | active")] = "semi-honest",
    drop_round: Annotated[str, typer.Option("--drop-round", help="R0..R4")] = "R2",
    bit_width: Annotated[int, typer.Option("--bit-width")] = 32,
    seed: int = 0,
) -> None:
    """Time one simulated round next to its primitive-cost model; prints JSON."""
    if graph not in ("complete", "harary") or mode not in ("semi-honest", "active"):
        raise typer.BadParameter("graph must be complete|harary, mode semi-honest|active")
    if drop_round.upper() not in ("R0", "R1", "R2", "R3", "R4"):
        raise typer.BadParameter("--drop-round must be one of R0..R4")
    raise typer.Exit(
        _bench(
            argparse.Namespace(
                clients=clients,
                length=length,
                dropout=dropout,
                graph=graph,
                degree=degree,
                threshold=threshold,
                mode=mode,
                drop_round=drop_round,
                bit_width=bit_width,
                seed=seed,
            )
        )
    )


@app.command("vectors")
def vectors_cmd(
    action: Annotated[str, typer.Argument(help="write | check")],
    dir: Annotated[str, typer.Argument(help="directory of <name>.json vector files")],
    replay_only: Annotated[
        bool, typer.Option("--replay-only", help="check: only replay the files, no diff")
    ] = False,
) -> None:
    """Write or check the transcript test vectors (specs/vectors)."""
    if action not in ("write", "check"):
        raise typer.BadParameter("action must be write or check")
    raise typer.Exit(_vectors(argparse.Namespace(action=action, dir=dir, replay_only=replay_only)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (also usable from tests)."""
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        result = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except Exception as exc:
        # Usage errors (typer vendors click, so match by shape, not by class).
        show = getattr(exc, "show", None)
        if callable(show) and isinstance(getattr(exc, "exit_code", None), int):
            show()
            return int(exc.exit_code)  # type: ignore[attr-defined]
        if type(exc).__name__ == "Abort":
            return 1
        raise
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
