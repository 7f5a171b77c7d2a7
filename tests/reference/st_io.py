"""Minimal safetensors writer/reader (no dependency on the safetensors package).

Format: u64 little-endian header length N, N bytes of JSON header {name: {"dtype", "shape",
"data_offsets": [begin, end]}} with offsets relative to the start of the data area, then the raw
little-endian data. Tensors are written in sorted name order, the header padded with spaces to a
multiple of 8 bytes, so the same tensors always give the same bytes.
"""
import json
import struct

import numpy as np
import torch

_DTYPES = {torch.float64: ("F64", np.dtype("<f8")),
           torch.float32: ("F32", np.dtype("<f4")),
           torch.int64: ("I64", np.dtype("<i8"))}
_BY_NAME = {v[0]: v[1] for v in _DTYPES.values()}


def save(tensors, path):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        code, np_dtype = _DTYPES[t.dtype]
        data = t.numpy().astype(np_dtype, copy=False).tobytes(order="C")
        header[name] = {"dtype": code, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arr = np.frombuffer(raw[base + a:base + b], dtype=_BY_NAME[info["dtype"]])
        out[name] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return out
