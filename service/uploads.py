"""Read a `POST /prune` multipart body as it arrives: the `model` part goes straight to a file
(never whole in memory), other parts are small fields. Past the size cap the request is refused
with 413, whether or not the client announced a Content-Length (chunked bodies are counted).

The event loop only collects the body's chunks; parsing them and writing the file happen in a
worker thread, a batch of about `BATCH_BYTES` at a time, so that status polls are answered
while uploads stream (parsing 10 uploads on the loop held every poll for up to 1.8 s, and a
write that waits for the disk would hold it longer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.problems import ProblemError

MODEL_PART = "model"
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32
FORM_OVERHEAD = MAX_FIELDS * MAX_FIELD_BYTES  # what the body may carry besides the model
#: fields that may be given more than once, in order (one `input` per forward argument)
REPEATABLE_FIELDS = frozenset({"input"})
#: body bytes handed to the parsing thread at once: one hop off the loop per batch
BATCH_BYTES = 1 << 20


@dataclass
class PruneForm:
    fields: dict[str, str] = field(default_factory=dict)
    #: the values of each repeatable field, in the order they came
    repeated: dict[str, list[str]] = field(default_factory=dict)
    model_bytes: int = 0
    has_model: bool = False


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        413,
        "upload_too_large",
        "Upload too large",
        f"the model file may be at most {limit} bytes; prune a smaller model or ask the "
        "operator to raise SYNFLOW_MAX_UPLOAD_BYTES",
    )


def _bad_form(detail: str) -> ProblemError:
    return ProblemError(400, "malformed_form", "Malformed multipart body", detail)


class FormReader:
    """The multipart parser and what it has read so far. Blocking (it writes the model file):
    `feed` and `finish` run in a worker thread, one call at a time."""

    def __init__(self, boundary: bytes, model_path: Path, max_bytes: int):
        self.form = PruneForm()
        self._model_path, self._max_bytes = model_path, max_bytes
        self._headers: dict[bytes, bytes] = {}
        self._header_field = self._header_value = b""
        self._part: str | None = None
        self._file: BinaryIO | None = None
        self._buffers: list[tuple[str, bytearray]] = []
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    def _on_part_begin(self) -> None:
        self._headers, self._part = {}, None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _on_headers_finished(self) -> None:
        _, disp = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise _bad_form("a part has no name in its Content-Disposition header")
        self._part = name
        if name == MODEL_PART:
            if self.form.has_model:
                raise _bad_form("send exactly one `model` part")
            self.form.has_model = True
            self._file = self._model_path.open("wb")
        else:
            if name not in REPEATABLE_FIELDS and any(n == name for n, _ in self._buffers):
                raise _bad_form(f"field {name!r} is given twice")
            if len(self._buffers) >= MAX_FIELDS:
                raise _bad_form(f"more than {MAX_FIELDS} fields")
            self._buffers.append((name, bytearray()))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == MODEL_PART:
            self.form.model_bytes += end - start
            if self.form.model_bytes > self._max_bytes:
                raise _too_large(self._max_bytes)
            assert self._file is not None
            self._file.write(memoryview(data)[start:end])  # no copy of the chunk
        else:
            buf = self._buffers[-1][1]
            buf += data[start:end]
            if len(buf) > MAX_FIELD_BYTES:
                raise _bad_form(f"field {self._part!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _on_part_end(self) -> None:
        if self._part == MODEL_PART:
            self.close()

    def feed(self, chunks: list[bytes]) -> None:
        try:
            for chunk in chunks:
                self._parser.write(chunk)
        except ProblemError:
            raise
        except Exception as exc:  # the parser's own errors: the body is not valid multipart
            raise _bad_form(f"the body is not valid multipart/form-data ({exc})") from exc

    def finish(self, chunks: list[bytes]) -> PruneForm:
        """The last chunks, then the fields decoded."""
        self.feed(chunks)
        try:
            self._parser.finalize()
        except Exception as exc:
            raise _bad_form(f"the body is not valid multipart/form-data ({exc})") from exc
        for name, buf in self._buffers:
            try:
                text = buf.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _bad_form(f"field {name!r} is not UTF-8 text") from exc
            if name in REPEATABLE_FIELDS:
                self.form.repeated.setdefault(name, []).append(text)
            else:
                self.form.fields[name] = text
        return self.form

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def receive_prune_form(request: Request, model_path: Path, max_bytes: int) -> PruneForm:
    """Parse the body; the model file is written to `model_path`."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise ProblemError(
            415,
            "unsupported_media_type",
            "Unsupported media type",
            "send multipart/form-data with a `model` file part and the fields "
            "(e.g. curl -F model=@model.pt -F sparsity=0.9 -F input_shape=1,3,224,224)",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD:
        raise _too_large(max_bytes)

    reader = FormReader(params[b"boundary"], model_path, max_bytes)
    batch: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            batch.append(chunk)
            size += len(chunk)
            if size >= BATCH_BYTES:
                await run_in_threadpool(reader.feed, batch)
                batch, size = [], 0
        return await run_in_threadpool(reader.finish, batch)
    finally:
        reader.close()  # a file left open by a refused body (closing costs no wait)
