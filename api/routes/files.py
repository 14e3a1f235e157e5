"""OpenAI Files API (``client.files``): uploads streamed into the blob store."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import FilesDep, OwnerDep
from api.responses import attachment, json_response, list_response
from api.uploads import receive_form
from inferq.batches import new_file_id, render_file
from inferq.errors import bad_request

router = APIRouter(tags=["files"])

PURPOSES = ("batch", "user_data", "assistants", "fine-tune", "vision", "evals")


UPLOAD_SCHEMA = {
    "type": "object",
    "properties": {
        "file": {"type": "string", "format": "binary", "title": "File"},
        "purpose": {"type": "string", "enum": list(PURPOSES), "title": "Purpose"},
    },
    "required": ["file", "purpose"],
}


def _purpose(fields: dict[str, list[str]]) -> str:
    values = fields.get("purpose") or []
    if not values:
        raise bad_request("missing required parameter 'purpose'", param="purpose")
    if len(values) > 1 or values[0] not in PURPOSES:
        raise bad_request(f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
    return values[0]


@router.post(
    "/files",
    summary="Upload a file",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": UPLOAD_SCHEMA}},
        }
    },
)
async def upload_file(request: Request, files: FilesDep, owner: OwnerDep):
    """The file is streamed into the blob store as it arrives (:func:`api.uploads.receive_form`:
    a 413 past ``MAX_FILE_BYTES``, a 400 for a form cut short); the record is written only
    once the whole form has been read."""

    async def on_file_start(fields: dict[str, list[str]]) -> None:
        if "purpose" in fields:  # checked before any byte is stored
            _purpose(fields)

    file_id = new_file_id()
    fields, upload = await receive_form(
        request,
        files.blobs,
        file_id,
        limit=files.settings.max_file_bytes,
        ttl=files.settings.file_ttl_sec,
        on_file_start=on_file_start,
    )
    try:
        if not upload.present:
            raise bad_request("missing required parameter 'file'", param="file")
        created = await files.record_file(
            file_id,
            size=upload.size,
            filename=upload.filename or "upload",
            purpose=_purpose(fields),
            owner=owner,
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await files.blobs.delete(file_id)
        raise
    return json_response(created)


@router.get("/files", summary="List files")
async def list_files(
    files: FilesDep,
    owner: OwnerDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
):
    return list_response(
        await files.list_files(owner, purpose=purpose, limit=limit, after=after, order=order),
        render_file,
    )


@router.get("/files/{file_id}", summary="Get a file's metadata")
async def get_file(file_id: str, files: FilesDep, owner: OwnerDep):
    return json_response(render_file(await files.file(file_id, owner)))


@router.get("/files/{file_id}/content", summary="Download a file")
async def file_content(file_id: str, files: FilesDep, owner: OwnerDep):
    record = await files.file(file_id, owner)
    return StreamingResponse(
        files.content(file_id),
        media_type="application/octet-stream",
        headers={"Content-Disposition": attachment(record["filename"])},
    )


@router.delete("/files/{file_id}", summary="Delete a file")
async def delete_file(file_id: str, files: FilesDep, owner: OwnerDep):
    await files.delete_file(file_id, owner)
    return json_response({"id": file_id, "object": "file", "deleted": True})
