"""A multipart form read as it arrives: small fields in memory, the one file into a blob.

Starlette's own form parser spools a whole upload to a temporary file before the route runs,
so a size limit could only be checked afterwards. Here the request body is fed to
``python-multipart``'s streaming parser chunk by chunk and the file part's bytes go straight
to the blob store (:class:`inferq.blobs.AsyncBlobs`, 1 MiB chunks), so the API holds about one
chunk of an upload at a time, and answers 413 as soon as the limit is crossed (at once when
``Content-Length`` already says so). ``on_file_start`` runs when the file part begins, with
the fields read so far: clients send the small fields first, so the request can be validated
(model known, served) before any audio is stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect, Request

from api.files import too_large
from inferq.blobs import AsyncBlobs, BlobTooLarge
from inferq.errors import ServiceError, bad_request

MAX_FIELD_BYTES = 64 * 1024  # all non-file fields together
FORM_OVERHEAD = 64 * 1024  # allowance for the fields and part headers in Content-Length


@dataclass
class Upload:
    present: bool = False
    size: int = 0
    filename: str = ""
    content_type: str = ""


@dataclass
class _Part:
    name: str = ""
    is_file: bool = False
    data: bytearray = field(default_factory=bytearray)


class _FormState:
    """The parser's callbacks: fields collected, file bytes queued for the blob writer."""

    def __init__(self, file_field: str):
        self.file_field = file_field
        self.fields: dict[str, list[str]] = {}
        self.upload = Upload()
        self.file_pieces: list[bytes] = []
        self.field_bytes = 0
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self._part = _Part()
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise bad_request("a multipart part has no name", param=None)
        self._part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" not in options and self._part.name != self.file_field:
            return
        if self._part.name != self.file_field:
            raise bad_request(
                f"unexpected file in field '{self._part.name}'", param=self._part.name
            )
        if self.upload.present:
            raise bad_request(f"more than one '{self.file_field}'", param=self.file_field)
        self._part.is_file = True
        self.upload.present = True
        self.upload.filename = options.get(b"filename", b"").decode("utf-8", "replace")
        self.upload.content_type = self._headers.get(b"content-type", b"").decode("latin-1")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part.is_file:
            self.file_pieces.append(data[start:end])
            return
        self.field_bytes += end - start
        if self.field_bytes > MAX_FIELD_BYTES:
            raise bad_request(f"the form fields exceed {MAX_FIELD_BYTES} bytes", param=None)
        self._part.data += data[start:end]

    def on_part_end(self) -> None:
        if self._part.is_file:
            return
        try:
            value = self._part.data.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request(
                f"field '{self._part.name}' is not UTF-8", param=self._part.name
            ) from None
        self.fields.setdefault(self._part.name, []).append(value)

    def take_pieces(self) -> bytes:
        data = b"".join(self.file_pieces)
        self.file_pieces.clear()
        return data


async def receive_form(
    request: Request,
    blobs: AsyncBlobs,
    blob_id: str,
    *,
    limit: int,
    ttl: int,
    file_field: str = "file",
    on_file_start: Callable[[dict[str, list[str]]], Awaitable[None]] | None = None,
) -> tuple[dict[str, list[str]], Upload]:
    """Read a multipart form; its file (if any) is stored as blob ``blob_id`` (expiring after
    ``ttl``). Raises 413 past ``limit`` bytes of file, 400 for a malformed form or one cut
    short (no closing boundary: the upload is incomplete); whatever fails, nothing stays in
    the blob store."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise bad_request("the request must be multipart/form-data", param=None)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise too_large(limit)
    state = _FormState(file_field)
    parser = MultipartParser(params[b"boundary"], state.callbacks())
    started = False

    async def pieces() -> AsyncIterator[bytes]:
        nonlocal started
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                if state.upload.present and not started:
                    started = True
                    if on_file_start is not None:
                        await on_file_start(state.fields)
                if state.file_pieces:
                    yield state.take_pieces()
            parser.finalize()  # checks nothing: a body cut short is caught below
        except FormParserError:
            raise bad_request("malformed multipart/form-data body", param=None) from None
        except ClientDisconnect:
            raise ServiceError(400, "the client went away during the upload") from None
        if parser.state != MultipartState.END:  # the client stopped before the last boundary
            raise bad_request(
                "the multipart body ends before its closing boundary (truncated upload)",
                param=None,
                code="truncated_body",
            )
        if state.file_pieces:
            yield state.take_pieces()

    try:
        state.upload.size = await blobs.write(blob_id, pieces(), ttl=ttl, limit=limit)
    except BlobTooLarge as exc:
        raise too_large(exc.limit) from None
    return state.fields, state.upload
