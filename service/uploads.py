"""Read a `POST /prune` multipart body as it arrives: the `model` part (and the optional
`calibration` part) goes straight to a file (never whole in memory), other parts are small
fields. Past a part's size cap the request is refused with 413, whether or not the client
announced a Content-Length (chunked bodies are counted)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.problems import ProblemError

MODEL_PART = "model"
CALIBRATION_PART = "calibration"
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
    calibration_bytes: int = 0
    has_calibration: bool = False


@dataclass(frozen=True)
class FilePart:
    """A part streamed to a file, with its cap and what to say past it."""

    path: Path
    max_bytes: int
    too_large: str


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        413,
        "upload_too_large",
        "Upload too large",
        f"the model file may be at most {limit} bytes; prune a smaller model or ask the "
        "operator to raise SYNFLOW_MAX_UPLOAD_BYTES",
    )


def _part_too_large(part: FilePart) -> ProblemError:
    return ProblemError(413, "upload_too_large", "Upload too large", part.too_large)


def _bad_form(detail: str) -> ProblemError:
    return ProblemError(400, "malformed_form", "Malformed multipart body", detail)


async def receive_prune_form(
    request: Request,
    model_path: Path,
    max_bytes: int,
    calibration_path: Path | None = None,
    max_calibration_bytes: int = 0,
) -> PruneForm:
    """Parse the body; the model file is written to `model_path`, the calibration part (refused
    unless `calibration_path` is given) to `calibration_path`."""
    files = {MODEL_PART: FilePart(model_path, max_bytes, _too_large(max_bytes).detail)}
    if calibration_path is not None:
        files[CALIBRATION_PART] = FilePart(
            calibration_path,
            max_calibration_bytes,
            f"the calibration file may be at most {max_calibration_bytes} bytes; send fewer "
            "samples (a few hundred are plenty) or ask the operator to raise "
            "SYNFLOW_MAX_CALIBRATION_BYTES",
        )
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
    allowed = sum(f.max_bytes for f in files.values()) + FORM_OVERHEAD
    if declared and declared.isdigit() and int(declared) > allowed:
        raise _too_large(max_bytes)

    form = PruneForm()
    state: dict = {"headers": {}, "header_field": b"", "header_value": b"", "part": None}
    sink: dict[str, BinaryIO | None] = {"file": None}
    received: dict[str, int] = {}
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
        if name in files:
            if name in received:
                how_many = "exactly one" if name == MODEL_PART else "at most one"
                raise _bad_form(f"send {how_many} `{name}` part")
            received[name] = 0
            sink["file"] = files[name].path.open("wb")
        else:
            if name not in REPEATABLE_FIELDS and any(n == name for n, _ in buffers):
                raise _bad_form(f"field {name!r} is given twice")
            if len(buffers) >= MAX_FIELDS:
                raise _bad_form(f"more than {MAX_FIELDS} fields")
            buffers.append((name, bytearray()))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        name = state["part"]
        if name in files:
            received[name] += len(chunk)
            if received[name] > files[name].max_bytes:
                raise _part_too_large(files[name])
            assert sink["file"] is not None
            sink["file"].write(chunk)
        else:
            buf = buffers[-1][1]
            buf += chunk
            if len(buf) > MAX_FIELD_BYTES:
                raise _bad_form(f"field {state['part']!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if state["part"] in files and sink["file"] is not None:
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
    form.has_model = MODEL_PART in received
    form.model_bytes = received.get(MODEL_PART, 0)
    form.has_calibration = CALIBRATION_PART in received
    form.calibration_bytes = received.get(CALIBRATION_PART, 0)
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
