"""OpenAI Files API (``client.files``): uploads streamed into the blob store."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import StreamingResponse

from api.deps import FilesDep, OwnerDep
from api.responses import attachment, json_response, list_response
from inferq.batches import render_file
from inferq.errors import bad_request

router = APIRouter(tags=["files"])

PURPOSES = ("batch", "user_data", "assistants", "fine-tune", "vision", "evals")
READ_BYTES = 1 << 20


@router.post("/files", summary="Upload a file")
async def upload_file(
    request: Request,
    files: FilesDep,
    owner: OwnerDep,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[Literal[PURPOSES], Form()],
):
    # a declared Content-Length past the limit was a 413 before the form was read
    # (api.middleware.DeclaredSizeLimit); an undeclared size is checked as the blob fills
    if len((await request.form()).getlist("file")) > 1:  # the parsed form, cached by Starlette
        raise bad_request("send one 'file' part per upload", param="file")

    async def pieces():
        while piece := await file.read(READ_BYTES):
            yield piece

    created = await files.create_file(
        pieces(), filename=file.filename or "upload", purpose=purpose, owner=owner
    )
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
