"""ONNX external data: tensors whose bytes live in data files beside the `.onnx`.

The dynamo exporter writes `m.onnx` plus `m.onnx.data` by default, and every model over 2 GB
comes that way. A model names its data files itself (`location`, `offset`, `length`), so the
names are untrusted. What is read:

- only a plain file name: no folder part, no `..`, no absolute path, nothing but one name in the
  model's own folder, which the caller chooses (the CLI: the `.onnx`'s folder; a bundle: the
  folder it was unpacked into);
- only a regular file with one link, looked at without following links (`lstat` first, so no
  FIFO, device or link target is ever opened), then opened with `O_NOFOLLOW` and checked again
  on the open descriptor (same inode, still a regular file);
- only the declared range, which must lie inside the file, hold exactly the tensor's bytes, and
  keep the files and the total within `OnnxLimits.max_data_bytes`.

Every check on the names runs before any file is looked at. Writing goes the other way: the
tensors that came from external data go to one data file beside the written `.onnx`.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import helper

from synflow.errors import InvalidModelError
from synflow.io.limits import GiB, OnnxLimits

#: keys of an external-data entry that we understand; `basepath` (or anything else) could
#: steer the read elsewhere, so it is refused
KNOWN_KEYS = frozenset({"location", "offset", "length", "checksum"})
#: element types packed two to a byte
_NIBBLE_TYPES = frozenset(
    getattr(onnx.TensorProto, t)
    for t in ("INT4", "UINT4", "FLOAT4E2M1")
    if hasattr(onnx.TensorProto, t)
)
_CHUNK = 64 << 20
#: offsets of large tensors in a written data file are aligned like onnx's own writer does
ALIGN = 4096
ALIGN_FROM_BYTES = 1 << 20
NAME_IN_MESSAGE = 60


def _quote(name: str) -> str:
    return repr(name[:NAME_IN_MESSAGE] + ("..." if len(name) > NAME_IN_MESSAGE else ""))


@dataclass(frozen=True)
class ExternalRef:
    """One tensor's external-data entry, checked by name (no file looked at yet)."""

    index: int  # position among the model's tensors (`synflow.io.onnx._tensors` order)
    tensor: onnx.TensorProto
    location: str
    offset: int
    length: int


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL or bool(tensor.external_data)


def expected_bytes(tensor: onnx.TensorProto) -> int:
    """The raw byte size of a tensor of its declared type and shape."""
    count = math.prod(tensor.dims)
    if tensor.data_type in _NIBBLE_TYPES:
        return (count + 1) // 2
    if tensor.data_type == onnx.TensorProto.STRING:
        raise InvalidModelError(
            f"tensor {_quote(tensor.name)} keeps strings in external data, which ONNX does not "
            "allow; store it inside the model"
        )
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        raise InvalidModelError(
            f"tensor {_quote(tensor.name)} has an unknown element type {tensor.data_type}"
        ) from None
    return count * itemsize


def check_location(location: str, tensor_name: str) -> None:
    """A plain file name in the model's folder, or InvalidModelError."""
    where = f"the external data of tensor {_quote(tensor_name)} names {_quote(location)}"
    if not location:
        raise InvalidModelError(
            f"the external data of tensor {_quote(tensor_name)} has no location"
        )
    if location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise InvalidModelError(
            f"{where}, an absolute path; only data files beside the model are read"
        )
    if location in (".", "..") or any(p == ".." for p in location.replace("\\", "/").split("/")):
        raise InvalidModelError(
            f"{where}, which leaves the model's folder (`..`); only data files beside the "
            "model are read"
        )
    if "/" in location or "\\" in location or "\0" in location:
        raise InvalidModelError(
            f"{where}, in a subfolder; only data files directly beside the model are read "
            "(save the model with all data files in its own folder)"
        )


def _integer(value: str, key: str, tensor_name: str) -> int:
    if not value.isdigit():
        raise InvalidModelError(
            f"the external data of tensor {_quote(tensor_name)} has {key}={_quote(value)}, not a "
            "non-negative integer"
        )
    return int(value)


def external_refs(tensors: list[onnx.TensorProto]) -> list[ExternalRef]:
    """The checked external-data entries of `tensors` (in their order); opens nothing."""
    refs = []
    for index, tensor in enumerate(tensors):
        if not is_external(tensor):
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        unknown = sorted(set(entries) - KNOWN_KEYS)
        if unknown:
            raise InvalidModelError(
                f"the external data of tensor {_quote(tensor.name)} has entries "
                f"{', '.join(_quote(k) for k in unknown[:5])} that are not understood; only "
                "location, offset and length are"
            )
        location = entries.get("location", "")
        check_location(location, tensor.name)
        size = expected_bytes(tensor)
        offset = _integer(entries.get("offset", "0"), "offset", tensor.name)
        length = _integer(entries.get("length", str(size)), "length", tensor.name)
        if length != size:
            raise InvalidModelError(
                f"the external data of tensor {_quote(tensor.name)} is {length} bytes, but its "
                f"shape {list(tensor.dims)[:8]} needs {size}"
            )
        refs.append(ExternalRef(index, tensor, location, offset, length))
    return refs


# --- reading -----------------------------------------------------------------------------------


def _open_data_file(folder_fd: int, location: str, tensor_name: str) -> tuple[int, int]:
    """(descriptor, size) of a regular, singly linked file `location` in the folder."""
    where = f"the external data file {_quote(location)} (named by tensor {_quote(tensor_name)})"
    try:
        seen = os.stat(location, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise InvalidModelError(
            f"{where} is missing: put the data files beside the .onnx (command line), or "
            "upload the .onnx and its data files as one zip (HTTP: zip -j -0 bundle.zip "
            "model.onnx model.onnx.data)"
        ) from None
    except OSError as exc:
        raise InvalidModelError(f"{where} cannot be read ({exc.strerror})") from None
    if stat.S_ISLNK(seen.st_mode):
        raise InvalidModelError(f"{where} is a symbolic link; links are never followed")
    if not stat.S_ISREG(seen.st_mode):
        raise InvalidModelError(f"{where} is not a regular file")
    if seen.st_nlink != 1:
        raise InvalidModelError(
            f"{where} has {seen.st_nlink} hard links; copy the file instead of linking it"
        )
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(location, flags, dir_fd=folder_fd)
    except OSError as exc:
        raise InvalidModelError(f"{where} cannot be opened ({exc.strerror})") from None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino) or not stat.S_ISREG(
        opened.st_mode
    ):
        os.close(fd)
        raise InvalidModelError(f"{where} changed while it was opened; refusing it")
    return fd, opened.st_size


def _read_range(fd: int, offset: int, length: int) -> bytes:
    parts, done = [], 0
    while done < length:
        chunk = os.pread(fd, min(_CHUNK, length - done), offset + done)
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


def read_external_data(refs: list[ExternalRef], folder: Path, limits: OnnxLimits) -> None:
    """Fill each referenced tensor's `raw_data` from its data file in `folder`; afterwards the
    model holds all its bytes and names no file."""
    by_file: dict[str, list[ExternalRef]] = {}
    for ref in refs:
        by_file.setdefault(ref.location, []).append(ref)
    total = sum(ref.length for ref in refs)
    if total > limits.max_data_bytes:
        raise InvalidModelError(
            f"the model's external data is {total} bytes, over the limit of "
            f"{limits.max_data_bytes} bytes ({limits.max_data_bytes / GiB:.1f} GiB)"
        )
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for location, group in by_file.items():
            fd, size = _open_data_file(folder_fd, location, group[0].tensor.name)
            try:
                if size > limits.max_data_bytes:
                    raise InvalidModelError(
                        f"the external data file {_quote(location)} is {size} bytes, over the "
                        f"limit of {limits.max_data_bytes} bytes"
                    )
                for ref in group:
                    if ref.offset + ref.length > size:
                        raise InvalidModelError(
                            f"the external data of tensor {_quote(ref.tensor.name)} ends at byte "
                            f"{ref.offset + ref.length}, beyond the end of {_quote(location)} "
                            f"({size} bytes); is the data file truncated or from another export?"
                        )
                    data = _read_range(fd, ref.offset, ref.length)
                    if len(data) != ref.length:
                        raise InvalidModelError(
                            f"the external data file {_quote(location)} shrank while it was read"
                        )
                    tensor = ref.tensor
                    del tensor.external_data[:]
                    tensor.data_location = onnx.TensorProto.DEFAULT
                    tensor.raw_data = data
            finally:
                os.close(fd)
    finally:
        os.close(folder_fd)


# --- writing -----------------------------------------------------------------------------------


def move_to_external(
    tensors: list[onnx.TensorProto], indexes: frozenset[int], data_path: Path, location: str
) -> None:
    """Write the bytes of `tensors[i]` for each i in `indexes` to `data_path` (one file) and
    make those tensors refer to it as `location`."""
    offset = 0
    with open(data_path, "wb") as fh:
        for index, tensor in enumerate(tensors):
            if index not in indexes:
                continue
            if not tensor.HasField("raw_data"):  # typed fields (float_data, ...) -> raw bytes
                tensor.CopyFrom(
                    onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), tensor.name)
                )
            raw = tensor.raw_data
            if len(raw) >= ALIGN_FROM_BYTES and offset % ALIGN:
                pad = ALIGN - offset % ALIGN
                fh.write(b"\0" * pad)
                offset += pad
            fh.write(raw)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (("location", location), ("offset", offset), ("length", len(raw))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
            offset += len(raw)
