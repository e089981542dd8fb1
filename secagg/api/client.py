"""Routes for enrolled clients (signed requests): check in, download, exchange messages."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from protocol import DecodeError, RemoteProtocolError
from secagg.api.deps import ClientId, Coord
from secagg.api.downloads import weights_response
from secagg.api.errors import ApiError
from secagg.api.schemas import Accepted, Id, Seq, Stage
from secagg.bodies import body_sha256, drop_resident, read_body
from secagg.downloads import RESPONSES as DOWNLOAD_RESPONSES
from secagg.orchestrator import stored_outcome
from secagg_http.signing import CBOR_MEDIA_TYPE

router = APIRouter(tags=["client"])


@router.get(
    "/v1/tasks/{task_id}/models/{ref}",
    response_class=StreamingResponse,
    responses=DOWNLOAD_RESPONSES,
)
async def download(task_id: Id, ref: str, cid: ClientId, coord: Coord) -> StreamingResponse:
    """The global model a client trains from (``ref``: a number, ``current`` or a tag).

    Only for clients that have been assigned a round of the task.
    """
    if not await run_in_threadpool(coord.may_download, task_id, cid):
        raise ApiError(
            403, "not_eligible", f"client {cid} has not been assigned a round of task {task_id}"
        )
    return await weights_response(coord, task_id, ref)


@router.post(
    "/v1/tasks/{task_id}/checkin",
    responses={
        200: {"description": "Selected: the training assignment (JSON)"},
        204: {"description": "Not selected before the long-poll timed out; check in again"},
    },
)
async def checkin(task_id: Id, cid: ClientId, coord: Coord) -> Response:
    """Long-poll to be selected (specs/service-v1.md §3.1): 409 paused, 410 finished."""
    runner = await coord.runner(task_id)
    assignment = await runner.checkin(cid, coord.settings.long_poll_s)
    if assignment is None:
        return Response(status_code=204)
    return JSONResponse(assignment.to_json())


@router.post("/v1/rounds/{round_id}/heartbeat", response_model=Stage)
async def heartbeat(round_id: Id, request: Request, cid: ClientId, coord: Coord) -> Stage:
    """A selected client is alive; held open a while, the round's stage (service-v1 §4)."""
    coord.running_round(round_id).heartbeat(cid)
    await coord.hold_heartbeat(cid, request.receive)
    return Stage(stage=coord.running_round(round_id).heartbeat(cid))


@router.post("/v1/rounds/{round_id}/ready", status_code=202, response_model=Accepted)
async def ready(round_id: Id, cid: ClientId, coord: Coord) -> Accepted:
    """Local training and encoding are done: put this client in the session."""
    coord.running_round(round_id).report_ready(cid)
    return Accepted()


@router.get(
    "/v1/rounds/{round_id}/session",
    responses={204: {"description": "Not formed yet; poll again"}},
)
async def session(round_id: Id, cid: ClientId, coord: Coord) -> Response:
    """Long-poll for the session formed among the ready clients (config, roster)."""
    live = coord.running_round(round_id)
    formed = await live.session_for(cid, coord.settings.long_poll_s)
    if formed is None:
        return Response(status_code=204)
    return JSONResponse(formed)


@router.get(
    "/v1/rounds/{round_id}/outcome",
    responses={204: {"description": "Not decided yet; poll again"}},
)
async def outcome(round_id: Id, cid: ClientId, coord: Coord) -> Response:
    """Long-poll: ``completed`` (with the committed version) or ``aborted`` (reason)."""
    live = coord.live_round(round_id)
    if live is not None:
        decided = await live.outcome_for(cid, coord.settings.long_poll_s)
    else:
        decided = await stored_outcome(coord.store, round_id, cid)
    if decided is None:
        return Response(status_code=204)
    return JSONResponse(decided)


@router.post("/v1/rounds/{round_id}/messages", status_code=202, response_model=Accepted)
async def submit(round_id: Id, request: Request, cid: ClientId, coord: Coord) -> Accepted:
    """A client's protocol message (``application/cbor``, the protocol's canonical bytes).

    Identical bytes already accepted from the client are accepted again (a retry).
    """
    if request.headers.get("content-type", "") != CBOR_MEDIA_TYPE:
        raise ApiError(415, "unsupported_media_type", f"protocol messages are {CBOR_MEDIA_TYPE}")
    # Before anything decodes the body: a participant of the formed session.
    driver = coord.running_round(round_id).require_driver(cid)
    body = await read_body(request, coord.settings.body_spool_bytes)
    try:
        await driver.submit(cid, body, body_sha256(request))
    except DecodeError as exc:
        raise ApiError(400, exc.reason.value, exc.detail) from exc
    except RemoteProtocolError as exc:
        raise ApiError(409, exc.reason.value, exc.detail) from exc
    finally:
        drop_resident(body)
    return Accepted()


@router.get(
    "/v1/rounds/{round_id}/messages/{seq}",
    response_class=Response,
    responses={
        200: {
            "description": "The server's protocol message number seq",
            "content": {CBOR_MEDIA_TYPE: {}},
        },
        204: {"description": "Not yet available; poll again"},
    },
)
async def receive(round_id: Id, seq: Seq, cid: ClientId, coord: Coord) -> Response:
    """Long-poll for the server's protocol message number ``seq`` to this client."""
    box = coord.running_round(round_id).require_driver(cid).mailboxes[cid]
    data = await box.get(seq, coord.settings.long_poll_s)
    if data is None:
        if box.closed:
            raise ApiError(410, "round_over", f"round {round_id} has no message {seq}")
        return Response(status_code=204)
    return Response(content=data, media_type=CBOR_MEDIA_TYPE)
