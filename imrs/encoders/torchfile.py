"""Read a PyTorch checkpoint's tensors into NumPy arrays without importing torch.

The default backbone's weights ship as a ``torch.save`` file. Importing torch only to read 4.7M
floats costs seconds and a gigabyte-sized install, so this reads the file itself. The rule is the
one ``torch.load(weights_only=True)`` applies: the pickle may only name an allow-list of tensor
and storage reconstructors and plain containers; any other global is refused before anything
runs. Both layouts torch writes are read: the zip archive (torch >= 1.6) and the legacy stream
of pickles followed by raw storages (the EfficientNet-Lite checkpoints).

A maintained reader (``ptloader`` on PyPI) handles the zip layout only, hence this module.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import WeightsUnavailableError

#: torch storage class name -> NumPy dtype ("BFloat16" is read as uint16 and widened).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafeCheckpointError(WeightsUnavailableError):
    """The checkpoint names something other than tensors and containers; nothing of it was run."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass
class _Storage:
    """A flat buffer; filled at once (zip) or after the main pickle was read (legacy)."""

    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None
    views: list[_LazyTensor] = field(default_factory=list)


@dataclass
class _LazyTensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        buf = self.storage.data
        if buf is None:
            raise UnsafeCheckpointError("checkpoint refers to a storage it does not contain")
        item = buf.dtype.itemsize
        n = int(np.prod(self.size)) if self.size else 1
        if n == 0:
            out = np.zeros(self.size, dtype=buf.dtype)
        else:
            last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride, strict=True))
            if self.offset < 0 or last >= len(buf) or any(st < 0 for st in self.stride):
                raise UnsafeCheckpointError("tensor view reaches outside its storage")
            out = np.lib.stride_tricks.as_strided(buf[self.offset:], shape=self.size,
                                                  strides=tuple(st * item for st in self.stride)).copy()
        return out


def _rebuild_tensor_v2(storage: _Storage, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                       requires_grad: bool = False, backward_hooks: Any = None, metadata: Any = None) -> _LazyTensor:
    if not isinstance(storage, _Storage):
        raise UnsafeCheckpointError("tensor without a storage")
    t = _LazyTensor(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))
    storage.views.append(t)
    return t


def _rebuild_tensor(storage: _Storage, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...]
                    ) -> _LazyTensor:
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data: _LazyTensor, requires_grad: bool = False, backward_hooks: Any = None) -> _LazyTensor:
    return data


def _rebuild_parameter_with_state(data: _LazyTensor, requires_grad: bool, backward_hooks: Any, state: Any
                                  ) -> _LazyTensor:
    return data


#: Everything a weights-only checkpoint may name (torch's own weights_only allow-list, minus the
#: types a plain state dict never holds).
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], storages: dict[str, _Storage], zip_reader: Any = None) -> None:
        super().__init__(file)
        self._storages = storages
        self._zip = zip_reader

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(f"checkpoint names {module}.{name}, which a weights-only reader "
                                        "refuses (it could run code)") from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafeCheckpointError(f"checkpoint holds an unexpected persistent object {str(pid)[:80]}")
        stype, key, numel = pid[1], str(pid[2]), int(pid[4])
        st = self._storages.get(key)
        if st is None:
            st = self._storages[key] = _Storage(stype.dtype, numel)
            if self._zip is not None:
                st.data = self._zip(key, stype.dtype)
        if len(pid) > 5 and pid[5] is not None:  # legacy view of a larger storage
            raise UnsafeCheckpointError("checkpoint uses storage views, which this reader does not support")
        return st


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        arr = obj.materialise()
        if obj.storage.dtype == _STORAGE_DTYPES["BFloat16Storage"]:
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise WeightsUnavailableError(f"checkpoint {path} has no data.pkl")
        prefix = pkl[: -len("data.pkl")]
        order = zf.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        if order != "little":
            raise WeightsUnavailableError(f"checkpoint {path} is big-endian, which is not supported")

        def read(key: str, dtype: np.dtype) -> np.ndarray:
            return np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype=dtype)

        storages: dict[str, _Storage] = {}
        return _Unpickler(io.BytesIO(zf.read(pkl)), storages, read).load()


def _read_legacy(path: Path) -> Any:
    with open(path, "rb") as f:
        storages: dict[str, _Storage] = {}

        def plain() -> Any:
            return _Unpickler(f, storages).load()

        if plain() != _LEGACY_MAGIC:
            raise WeightsUnavailableError(f"{path} is not a PyTorch checkpoint")
        plain()  # protocol version
        info = plain()
        if not (isinstance(info, dict) and info.get("little_endian", False)):
            raise WeightsUnavailableError(f"checkpoint {path} is big-endian, which is not supported")
        obj = plain()
        keys = plain()
        if not isinstance(keys, list):
            raise UnsafeCheckpointError(f"checkpoint {path} has no storage table")
        for key in keys:
            st = storages.get(str(key))
            if st is None:
                raise UnsafeCheckpointError(f"checkpoint {path} lists a storage it never used")
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != st.numel:
                raise UnsafeCheckpointError(f"checkpoint {path}: storage {key} has {numel} elements, "
                                            f"expected {st.numel}")
            nbytes = numel * st.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise WeightsUnavailableError(f"checkpoint {path} is truncated")
            st.data = np.frombuffer(raw, dtype=st.dtype)
        return obj


def read_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict in ``path`` as ``{name: ndarray}`` (a ``state_dict``/``model`` entry is
    unwrapped, a ``module.`` prefix dropped). Raises WeightsUnavailableError with one line."""
    path = Path(path)
    try:
        obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
        obj = _materialise(obj)
    except WeightsUnavailableError:
        raise
    except (OSError, EOFError, ValueError, TypeError, KeyError, struct.error, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:
        raise WeightsUnavailableError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                                      f"{' '.join(str(exc).split())[:200]}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise WeightsUnavailableError(f"checkpoint {path} does not hold a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}
