"""Read a `POST /prune` multipart body as it arrives: the `model` part goes straight to a file
(never whole in memory), other parts are small fields. Past the size cap the request is refused
with 413, whether or not the client announced a Content-Length (chunked bodies are counted)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.problems import ProblemError

MODEL_PART = "model"
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 32
FORM_OVERHEAD = MAX_FIELDS * MAX_FIELD_BYTES  # what the body may carry besides the model
#: fields that may be given more than once, in order (one `input` per forward argument)
REPEATABLE_FIELDS = frozenset({"input"})


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

    form = PruneForm()
    state: dict = {"headers": {}, "header_field": b"", "header_value": b"", "part": None}
    sink: dict[str, BinaryIO | None] = {"file": None}
    buffers: list[tuple[str, bytearray]] = []

    def on_part_begin() -> None:
        state["headers"], state["part"] = {}, None

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header_field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["header_value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["header_field"].lower()] = state["header_value"]
        state["header_field"], state["header_value"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise _bad_form("a part has no name in its Content-Disposition header")
        state["part"] = name
        if name == MODEL_PART:
            if form.has_model:
                raise _bad_form("send exactly one `model` part")
            form.has_model = True
            sink["file"] = model_path.open("wb")
        else:
            if name not in REPEATABLE_FIELDS and any(n == name for n, _ in buffers):
                raise _bad_form(f"field {name!r} is given twice")
            if len(buffers) >= MAX_FIELDS:
                raise _bad_form(f"more than {MAX_FIELDS} fields")
            buffers.append((name, bytearray()))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if state["part"] == MODEL_PART:
            form.model_bytes += len(chunk)
            if form.model_bytes > max_bytes:
                raise _too_large(max_bytes)
            assert sink["file"] is not None
            sink["file"].write(chunk)
        else:
            buf = buffers[-1][1]
            buf += chunk
            if len(buf) > MAX_FIELD_BYTES:
                raise _bad_form(f"field {state['part']!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if state["part"] == MODEL_PART and sink["file"] is not None:
            sink["file"].close()
            sink["file"] = None

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except ProblemError:
        raise
    except Exception as exc:  # the parser's own errors: the body is not valid multipart
        raise _bad_form(f"the body is not valid multipart/form-data ({exc})") from exc
    finally:
        if sink["file"] is not None:
            sink["file"].close()
    for name, buf in buffers:
        try:
            text = buf.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad_form(f"field {name!r} is not UTF-8 text") from exc
        if name in REPEATABLE_FIELDS:
            form.repeated.setdefault(name, []).append(text)
        else:
            form.fields[name] = text
    return form
