"""Column-wise text kernels for validation: Arrow compute (RE2 and UTF-8 kernels in C++) that
give exactly what Python's own string methods give, with Python left only for the few values a
vectorised pre-filter flags (a value that starts or ends with a space, a string JSON must escape).

Exactness matters here: the stripped text, the feature JSON and the content hash built from them
must stay byte for byte what the per-row code made, or stored rows would stop matching their
re-ingested files.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# What ``str.isspace()`` holds (``str.strip()`` removes these); tests/unit/test_kernels.py checks
# it against every code point.
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# The bytes a string starting or ending with one of those can start or end with (in UTF-8): a
# cheap superset, so that only those strings are looked at in Python.
_FIRST_BYTE = np.zeros(256, dtype=bool)
_LAST_BYTE = np.zeros(256, dtype=bool)
for _char in PY_WHITESPACE:
    _encoded = _char.encode("utf-8")
    _FIRST_BYTE[_encoded[0]] = _LAST_BYTE[_encoded[-1]] = True
# A JSON string that json.dumps (ensure_ascii) writes as it is, between quotes.
_JSON_PLAIN = r"^[\x20-\x21\x23-\x5b\x5d-\x7e]*$"


def to_arrow(values: pd.Series) -> tuple[pa.Array, np.ndarray]:
    """``values`` (str or None) as an Arrow string array, and where a value holds a lone
    surrogate (UTF-8 cannot hold it: such a value is U+FFFD in the array, same length)."""
    bad = np.zeros(len(values), dtype=bool)
    try:
        return pa.array(values, type=pa.string(), from_pandas=True), bad
    except UnicodeEncodeError:
        pass
    array = values.to_numpy(dtype=object, copy=True)
    for i, value in enumerate(array):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                bad[i] = True
                array[i] = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return pa.array(array, type=pa.string(), from_pandas=True), bad


def as_bool(mask) -> np.ndarray:
    """An Arrow boolean array as a numpy one, null as False."""
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def _bytes(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The value offsets (one more than values) and the UTF-8 bytes of a string array, unshared."""
    _, offsets, data = array.buffers()[:3]
    width = np.int32 if array.type == pa.string() else np.int64
    ends = np.frombuffer(offsets, dtype=width)[array.offset : array.offset + len(array) + 1].astype(np.int64)
    return ends, (np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8))


def _edges(array: pa.Array, last: bool = True) -> np.ndarray:
    """Where a value may start (or end, with ``last``) with a space: a superset, from its bytes."""
    ends, data = _bytes(array)
    starts, stops = ends[:-1], ends[1:]
    filled = (stops > starts) & ~as_bool(pc.is_null(array))
    out = np.zeros(len(array), dtype=bool)
    out[filled] = _FIRST_BYTE[data[starts[filled]]]
    if last:
        out[filled] |= _LAST_BYTE[data[stops[filled] - 1]]
    return out


def has_nul(array: pa.Array) -> np.ndarray:
    """Where a value holds a NUL character (one pass over all the bytes first: usually none does)."""
    ends, data = _bytes(array)
    if data[ends[0] : ends[-1]].all():
        return np.zeros(len(array), dtype=bool)
    return as_bool(pc.match_substring(array, "\x00"))


def strip(values: pd.Series, array: pa.Array) -> tuple[pd.Series, pa.Array]:
    """``values.str.strip()`` (None stays None) and the same for its Arrow form ``array``.

    Only the values that may start or end with a space (few) go through ``str.strip``.
    """
    at = np.flatnonzero(_edges(array))
    if not len(at):
        return values, array
    out = values.to_numpy(dtype=object, copy=True)
    out[at] = [out[i].strip() for i in at]
    mask = np.zeros(len(array), dtype=bool)
    mask[at] = True
    stripped = pa.array([s.strip() for s in array.take(pa.array(at)).to_pylist()], type=pa.string())
    return pd.Series(out, index=values.index), pc.replace_with_mask(array, pa.array(mask), stripped)


def blank(array: pa.Array) -> np.ndarray:
    """Where a value is null, empty or only spaces (``str(v).strip() == ""``)."""
    out = as_bool(pc.or_kleene(pc.is_null(array), pc.equal(pc.binary_length(array), 0)))
    maybe = np.flatnonzero(_edges(array, last=False))  # only those can be all spaces
    if len(maybe):
        out[maybe] = [not v.strip() for v in array.take(pa.array(maybe)).to_pylist()]
    return out


def json_strings(array: pa.Array) -> pa.Array:
    """Each string as ``json.dumps`` writes it (ASCII only, escaped), null where missing."""
    quoted = pc.binary_join_element_wise('"', array, '"', "")
    escape = np.flatnonzero(~as_bool(pc.or_kleene(pc.is_null(array), pc.match_substring_regex(array, _JSON_PLAIN))))
    if not len(escape):
        return quoted
    mask = np.zeros(len(array), dtype=bool)
    mask[escape] = True
    encoded = [json.dumps(v) for v in array.take(pa.array(escape)).to_pylist()]
    return pc.replace_with_mask(quoted, pa.array(mask), pa.array(encoded, type=pa.string()))


def json_values(values: pd.Series) -> pa.Array:
    """Each value as ``json.dumps`` writes it, null where missing (NaN, None)."""
    present = values.notna().to_numpy()
    if pd.api.types.is_float_dtype(values.dtype):
        numbers = values.to_numpy(dtype=float)
        if np.isfinite(numbers[present]).all():  # json.dumps writes a finite float as its repr
            return pa.array(list(map(float.__repr__, numbers.tolist())), type=pa.string(), mask=~present)
    elif values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) == "string":
        array, bad = to_arrow(values.where(values.notna(), None))
        if not bad.any():
            return json_strings(array)
    return pa.array(
        [json.dumps(v) if p else None for v, p in zip(values.tolist(), present, strict=True)], type=pa.string()
    )


def json_objects(names: list[str], columns: list[pd.Series], n: int) -> pa.Array:
    """One JSON object per row, as ``json.dumps({name: value})`` writes it with the names in
    the given order and the missing values left out."""
    if not names:
        return pa.array(["{}"] * n, type=pa.string())
    parts = [
        pc.binary_join_element_wise(json.dumps(name) + ": ", json_values(column), ", ", "")
        for name, column in zip(names, columns, strict=True)
    ]
    joined = pc.binary_join_element_wise(*parts, "", null_handling="replace", null_replacement="")
    # every present value ends in ", ": drop the last one
    return pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(joined, 0, -2), "}", "")


def sha256_hex(keys: pa.Array) -> list[str]:
    """The SHA-256 hex digest of each string's UTF-8 bytes (no nulls)."""
    _, offsets, data = keys.buffers()
    width = np.int32 if keys.type == pa.string() else np.int64
    ends = np.frombuffer(offsets, dtype=width)[keys.offset : keys.offset + len(keys) + 1].tolist()
    view = memoryview(data)
    sha = hashlib.sha256
    return [sha(view[a:b]).hexdigest() for a, b in zip(ends[:-1], ends[1:], strict=True)]
