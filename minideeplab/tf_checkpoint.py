"""Read TensorFlow's (V2) checkpoints with NumPy and the standard library alone.

The official DeepLab model zoo ships `model.ckpt.index` and `model.ckpt.data-00000-of-00001`;
`model.ckpt` is the *prefix*. The format, as TensorFlow writes it (`core/util/tensor_bundle/`,
`core/lib/io/{table,block,format}.cc`, LevelDB's `doc/table_format.md`):

- `PREFIX.index` is an SSTable: blocks of key/value entries (keys sorted, each sharing a prefix
  with the one before it; a "restart point" every 16 entries stores a key whole), each block
  followed by a 1-byte compression type and a masked CRC32C of the block and that byte; an index
  block maps a separator key to each data block's (offset, size) handle; a 48-byte footer holds
  the handles of the metaindex and index blocks and a magic number.
- Its first entry (key "") is a `BundleHeaderProto` (number of shards, endianness, version); every
  other key is a tensor name with a `BundleEntryProto`: dtype, shape, shard, offset, size and the
  masked CRC32C of the tensor's bytes (protobuf wire format, decoded here by hand).
- `PREFIX.data-SSSSS-of-NNNNN` hold the raw little-endian tensor bytes; a string tensor is its
  varint lengths, a masked CRC32C of the lengths, then the bytes.

Every checksum is verified: a corrupt file raises ValueError naming the file and the tensor (or
the table block). Not supported, each with a clear error: partitioned variables (stored as
slices), Snappy-compressed index blocks (TensorFlow stopped writing them in 1.2), big-endian
checkpoints, and the quantized, resource and variant dtypes.
"""
import functools
import os
import struct
from typing import NamedTuple

import numpy as np

# ---- CRC-32C (Castagnoli): what TensorFlow's crc32c::Value computes ----
_POLY = 0x82F63B78  # the Castagnoli polynomial, bit-reversed (the CRC consumes bytes LSB first)


def _byte_table():
    table = np.zeros(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        table[i] = c
    return table


_TABLE = _byte_table()
_TABLE_LIST = [int(c) for c in _TABLE]


def _apply(images, reg):
    """The GF(2)-linear map whose images of the 32 unit vectors are `images`, on uint32 `reg`."""
    out = np.zeros_like(reg)
    for bit in range(32):
        out ^= images[bit] * ((reg >> np.uint32(bit)) & np.uint32(1))
    return out


@functools.cache
def _zeros_shift(log_n):
    """Feeding 2**log_n zero bytes to a CRC register is linear in the register: the images of
    the 32 unit vectors (for 1 byte, one table step; for 2n bytes, the n-byte map twice)."""
    if log_n == 0:
        unit = np.uint32(1) << np.arange(32, dtype=np.uint32)
        return _TABLE[unit & np.uint32(0xFF)] ^ (unit >> np.uint32(8))
    half = _zeros_shift(log_n - 1)
    return _apply(half, half)


def crc32c(data):
    """CRC-32C of `data` (bytes-like), e.g. crc32c(b"123456789") == 0xE3069283.

    Large inputs are cut into chunks of 2**m bytes (zeros prepended to fill the first: they
    leave a register of 0 at 0) whose registers advance side by side in NumPy, four bytes per
    word, then merge pairwise: the register of A+B is that of A pushed through len(B) zero bytes,
    XOR that of B (the CRC is linear over GF(2)). The initial register 0xFFFFFFFF is the same as
    XOR-ing the first four bytes with 0xFF.
    """
    buf = np.frombuffer(data, np.uint8)
    if buf.size < 4096:  # a plain loop is faster than NumPy's per-call overhead here
        crc = 0xFFFFFFFF
        for b in buf.tobytes():
            crc = _TABLE_LIST[(crc ^ b) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF
    log_chunk = min(10, int(buf.size).bit_length() // 2)  # ~sqrt(size): few steps, few chunks
    chunk = 1 << log_chunk
    padded = np.zeros(-(-buf.size // chunk) * chunk, np.uint8)
    padded[padded.size - buf.size:] = buf
    padded[padded.size - buf.size:][:4] ^= 0xFF
    words = np.ascontiguousarray(padded.view("<u4").reshape(-1, chunk // 4).T)
    reg = np.zeros(words.shape[1], np.uint32)
    for word in words:
        reg ^= word  # a little-endian word feeds its four bytes, first byte lowest
        for _ in range(4):
            reg = _TABLE[reg & np.uint32(0xFF)] ^ (reg >> np.uint32(8))
    while reg.size > 1:
        if reg.size % 2:  # a chunk of zeros in front changes nothing
            reg = np.concatenate([np.zeros(1, np.uint32), reg])
        reg = _apply(_zeros_shift(log_chunk), reg[0::2]) ^ reg[1::2]
        log_chunk += 1
    return int(reg[0]) ^ 0xFFFFFFFF


def unmask_crc(masked):
    """LevelDB/TensorFlow store CRCs "masked" (rotated, plus a constant) so that a CRC of data
    that itself holds CRCs stays well distributed (crc32c.h, Unmask)."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ---- protobuf wire format (only what the bundle protos use) ----
def _varint(buf, pos, what):
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Corrupt(f"bad varint in {what}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf, what):
    """{field number: [values]} of a serialized message: ints for varint/fixed, bytes for
    length-delimited fields (nested messages are decoded by the caller)."""
    fields, pos = {}, 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos, what)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, what)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise _Corrupt(f"truncated {what}")
            value = int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        elif wire == 2:
            length, pos = _varint(buf, pos, what)
            if pos + length > len(buf):
                raise _Corrupt(f"truncated {what}")
            value = bytes(buf[pos:pos + length])
            pos += length
        else:
            raise _Corrupt(f"unexpected protobuf wire type {wire} in {what}")
        fields.setdefault(number, []).append(value)
    return fields


def _int64(value):
    """A varint holding a negative int64 is its 64-bit two's complement."""
    return value - (1 << 64) if value >= 1 << 63 else value


class _Corrupt(Exception):
    """Raised deep in the parsers; turned into a ValueError that names the file."""


# ---- dtypes: tensorflow/core/framework/types.proto DataType -> TensorFlow's name ----
_DTYPES = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
    8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32",
    14: "bfloat16", 15: "qint16", 16: "quint16", 17: "uint16", 18: "complex128", 19: "float16",
    20: "resource", 21: "variant", 22: "uint32", 23: "uint64",
}
# How the supported numeric dtypes lie in a data file (bfloat16 is widened after reading).
_NUMPY = {
    "float32": "<f4", "float64": "<f8", "int32": "<i4", "uint8": "u1", "int16": "<i2",
    "int8": "i1", "complex64": "<c8", "int64": "<i8", "bool": "?", "bfloat16": "<u2",
    "uint16": "<u2", "complex128": "<c16", "float16": "<f2", "uint32": "<u4", "uint64": "<u8",
}


class TensorEntry(NamedTuple):
    """Where and what one tensor is (a decoded BundleEntryProto)."""
    dtype: str        # TensorFlow's name: float32, int64, bfloat16, string, ...
    shape: tuple
    shard: int
    offset: int
    size: int
    crc: int          # unmasked CRC32C of the `size` bytes
    n_slices: int     # > 0: a partitioned variable, whose data lives in slice entries


# ---- the SSTable (.index) ----
_FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic
_MAGIC = 0xDB4775248B80FB57
_BLOCK_TRAILER = 5  # compression type byte + masked CRC32C


def _block_handle(buf, pos):
    """A BlockHandle: varint offset and size of a block (format.cc)."""
    offset, pos = _varint(buf, pos, "a block handle")
    size, pos = _varint(buf, pos, "a block handle")
    return (offset, size), pos


def _read_block(data, handle, what):
    """The contents of the block at handle (offset, size), its trailer's checksum verified."""
    offset, size = handle
    end = offset + size + _BLOCK_TRAILER
    if end > len(data):
        raise _Corrupt(f"{what} at offset {offset} ({size} bytes) runs past the end of the file "
                       f"({len(data)} bytes): truncated?")
    contents = data[offset:offset + size + 1]  # the type byte is covered by the checksum
    stored = unmask_crc(int.from_bytes(data[end - 4:end], "little"))
    if crc32c(contents) != stored:
        raise _Corrupt(f"{what} at offset {offset} ({size} bytes) fails its CRC32C check")
    kind = contents[-1]
    if kind == 1:
        raise _Corrupt(f"{what} at offset {offset} is Snappy-compressed (written by TensorFlow "
                       "1.1 or older), which this reader does not support; re-save the "
                       "checkpoint with a newer TensorFlow")
    if kind != 0:
        raise _Corrupt(f"{what} at offset {offset} has unknown compression type {kind}")
    return contents[:-1]


def _block_entries(block, what):
    """The (key, value) pairs of a block: each entry is varints (shared key bytes, unshared key
    bytes, value bytes), the unshared key tail, the value; the block ends with the restart
    offsets (fixed32 each, entries storing their whole key) and their count (block.cc)."""
    if len(block) < 4:
        raise _Corrupt(f"{what}: too short for its restart count")
    n_restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 * (1 + n_restarts)
    if n_restarts < 1 or limit < 0:
        raise _Corrupt(f"{what}: bad restart count {n_restarts}")
    restarts = {int.from_bytes(block[limit + 4 * i:limit + 4 * i + 4], "little")
                for i in range(n_restarts)}
    # The first entry cannot share a key prefix, so it is always whole.
    entries, key, pos, whole_keys = [], b"", 0, {0}
    while pos < limit:
        start = pos
        shared, pos = _varint(block, pos, what)
        unshared, pos = _varint(block, pos, what)
        n_value, pos = _varint(block, pos, what)
        if shared > len(key) or pos + unshared + n_value > limit:
            raise _Corrupt(f"{what}: bad entry at offset {start}")
        key = key[:shared] + bytes(block[pos:pos + unshared])
        pos += unshared
        entries.append((key, bytes(block[pos:pos + n_value])))
        pos += n_value
        if shared == 0:
            whole_keys.add(start)
    if not restarts <= whole_keys:
        raise _Corrupt(f"{what}: restart points {sorted(restarts)} are not whole-key entries")
    return entries


def _table_entries(data, what):
    """All (key, value) pairs of an SSTable held in `data`, in key order (table.cc)."""
    if len(data) < _FOOTER_SIZE:
        raise _Corrupt(f"{what} is {len(data)} bytes, shorter than the table footer: truncated?")
    footer = data[-_FOOTER_SIZE:]
    if int.from_bytes(footer[-8:], "little") != _MAGIC:
        raise _Corrupt(f"{what} does not end with the table magic number: truncated, corrupt, "
                       "or not a TensorFlow V2 checkpoint index")
    meta_handle, pos = _block_handle(footer, 0)
    index_handle, _ = _block_handle(footer, pos)
    # The metaindex block names filter blocks: TensorFlow writes none and never reads it; it is
    # checked here all the same, so that every byte but the footer's padding is verified.
    _block_entries(_read_block(data, meta_handle, "metaindex block"), "metaindex block")
    index = _block_entries(_read_block(data, index_handle, "index block"), "index block")
    entries = []
    for _, value in index:  # one entry per data block: a key >= its last key, its handle
        handle, _ = _block_handle(value, 0)
        entries += _block_entries(_read_block(data, handle, "data block"),
                                  f"data block at offset {handle[0]}")
    keys = [k for k, _ in entries]
    if any(a >= b for a, b in zip(keys, keys[1:])):
        raise _Corrupt("table keys are not in strictly increasing order")
    return entries


def _parse_entry(value, name):
    """A BundleEntryProto (tensor_bundle.proto): 1 dtype, 2 shape (a TensorShapeProto: 2 dim,
    each 1 size; 3 unknown_rank), 3 shard_id, 4 offset, 5 size, 6 crc32c (fixed32, masked),
    7 slices (present only for a partitioned variable)."""
    f = _proto_fields(value, f"the entry of tensor '{name}'")
    code = f.get(1, [0])[-1]
    shape = []
    for shape_msg in f.get(2, []):
        s = _proto_fields(shape_msg, f"the shape of tensor '{name}'")
        if s.get(3, [0])[-1]:
            raise _Corrupt(f"tensor '{name}' has an unknown rank")
        shape = [_int64(_proto_fields(d, "a shape dim").get(1, [0])[-1]) for d in s.get(2, [])]
    if any(d < 0 for d in shape):
        raise _Corrupt(f"tensor '{name}' has an invalid shape {shape}")
    return TensorEntry(dtype=_DTYPES.get(code, f"DataType {code}"), shape=tuple(shape),
                       shard=f.get(3, [0])[-1], offset=f.get(4, [0])[-1], size=f.get(5, [0])[-1],
                       crc=unmask_crc(f.get(6, [0])[-1]), n_slices=len(f.get(7, [])))


def _prefix(path):
    """The checkpoint prefix of `path`: itself, or without a trailing .index."""
    prefix = os.fspath(path)
    return prefix[:-len(".index")] if prefix.endswith(".index") else prefix


def _read_index(prefix):
    """(number of shards, {tensor name: TensorEntry}) of the checkpoint at `prefix`."""
    path = prefix + ".index"
    if not os.path.isfile(path):
        hint = (" (a file named like the prefix exists: a V1 checkpoint? only V2, with .index "
                "and .data-* files, is supported)" if os.path.isfile(prefix) else "")
        raise ValueError(f"no checkpoint index {path}: pass the prefix, the path without "
                         f".index or .data-*{hint}")
    with open(path, "rb") as f:
        data = memoryview(f.read())
    try:
        entries = _table_entries(data, "the index")
        if not entries or entries[0][0] != b"":
            raise _Corrupt("the first entry is not the bundle header")
        header = _proto_fields(entries[0][1], "the bundle header")
        n_shards = header.get(1, [0])[-1]
        if n_shards < 1:
            raise _Corrupt(f"the header gives {n_shards} data shards")
        if header.get(2, [0])[-1] != 0:
            raise _Corrupt("the checkpoint is big-endian, which this reader does not support")
        # VersionDef: a bundle whose min_consumer exceeds format version 1 (the one described
        # here, and still TensorFlow's) needs a newer reader.
        min_consumer = _proto_fields(header.get(3, [b""])[-1], "the header").get(2, [0])[-1]
        if min_consumer > 1:
            raise _Corrupt(f"the bundle needs a reader of format version {min_consumer} (this "
                           "one reads version 1)")
        tensors = {}
        for key, value in entries[1:]:
            if key.startswith(b"\0"):
                continue  # a slice of a partitioned variable (checkpoint::EncodeTensorNameSlice)
            name = key.decode("utf-8", errors="backslashreplace")
            entry = _parse_entry(value, name)
            if not entry.n_slices and not 0 <= entry.shard < n_shards:
                raise _Corrupt(f"tensor '{name}' is in shard {entry.shard} of {n_shards}")
            tensors[name] = entry
    except _Corrupt as e:
        raise ValueError(f"{path}: {e}") from None
    return n_shards, tensors


def _data_path(prefix, shard, n_shards):
    return f"{prefix}.data-{shard:05d}-of-{n_shards:05d}"


def _checked_strings(raw, entry, name):
    """The bytes objects of a string tensor, its two checksums verified (tensor_bundle.cc,
    WriteStringTensor): the lengths' checksum covers them as fixed-width little-endian integers
    (uint32, or uint64 past 4 GiB), not as the varints stored; the entry's covers those integers,
    the lengths' checksum and the string bytes."""
    count = int(np.prod(entry.shape, dtype=np.int64))
    if entry.size == 0:  # as TensorFlow reads it: every element empty
        return np.full(entry.shape, b"", object)
    lengths, pos = [], 0
    for _ in range(count):
        n, pos = _varint(raw, pos, f"the string lengths of tensor '{name}'")
        lengths.append(n)
    fixed = b"".join(struct.pack("<I" if n <= 0xFFFFFFFF else "<Q", n) for n in lengths)
    length_crc = raw[pos:pos + 4]
    if crc32c(fixed) != unmask_crc(int.from_bytes(length_crc, "little")):
        raise _Corrupt(f"tensor '{name}': its string lengths fail their CRC32C check")
    if pos + 4 + sum(lengths) != len(raw):
        raise _Corrupt(f"tensor '{name}': its string lengths do not add up to its size")
    if crc32c(fixed + length_crc + raw[pos + 4:]) != entry.crc:
        raise _Corrupt(f"tensor '{name}' ({entry.size} bytes at offset {entry.offset}) fails "
                       "its CRC32C check")
    out, pos = np.empty(count, object), pos + 4
    for i, n in enumerate(lengths):
        out[i] = raw[pos:pos + n]
        pos += n
    return out.reshape(entry.shape)


def _checked_array(raw, entry, name):
    """The array of a numeric tensor, its checksum verified."""
    if crc32c(raw) != entry.crc:
        raise _Corrupt(f"tensor '{name}' ({entry.size} bytes at offset {entry.offset}) fails "
                       "its CRC32C check")
    array = np.frombuffer(raw, _NUMPY[entry.dtype])
    if entry.dtype == "bfloat16":  # NumPy has no bfloat16: it is a float32's upper half, exactly
        array = (array.astype("<u4") << 16).view("<f4")
    return array.reshape(entry.shape)


def _read_tensor(prefix, n_shards, name, entry):
    if entry.n_slices:
        raise ValueError(f"{prefix}.index: tensor '{name}' is a partitioned variable "
                         f"({entry.n_slices} slices), which this reader does not support")
    if entry.dtype != "string" and entry.dtype not in _NUMPY:
        raise ValueError(f"{prefix}.index: tensor '{name}' has dtype {entry.dtype}, which this "
                         "reader does not support")
    path = _data_path(prefix, entry.shard, n_shards)
    if entry.dtype != "string":
        count = int(np.prod(entry.shape, dtype=np.int64))
        expected = count * np.dtype(_NUMPY[entry.dtype]).itemsize
        if entry.size != expected:
            raise ValueError(f"{prefix}.index: tensor '{name}' ({entry.dtype}{list(entry.shape)}"
                             f") has {entry.size} bytes, expected {expected}")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing data shard {entry.shard} of {n_shards} (it holds "
                         f"tensor '{name}')")
    raw = bytearray(entry.size)  # writable, so that the array is writable like any other
    with open(path, "rb") as f:
        f.seek(entry.offset)
        n_read = f.readinto(raw)
    if n_read != entry.size:
        raise ValueError(f"{path}: tensor '{name}' needs bytes [{entry.offset}, "
                         f"{entry.offset + entry.size}) but the file has "
                         f"{os.path.getsize(path)}: truncated?")
    try:
        if entry.dtype == "string":
            return _checked_strings(bytes(raw), entry, name)
        return _checked_array(raw, entry, name)
    except _Corrupt as e:
        raise ValueError(f"{path}: {e}: the file is corrupt") from None


def list_variables(prefix):
    """{name: (dtype, shape)} of the checkpoint at `prefix` (e.g. ".../model.ckpt"; a path ending
    in .index is taken too), from its index alone. dtype is TensorFlow's name ("float32",
    "int64", "bfloat16", "string", ...), shape a tuple; names as TensorFlow lists them
    (`xception_65/entry_flow/conv1_1/weights`)."""
    _, tensors = _read_index(_prefix(prefix))
    return {name: (e.dtype, e.shape) for name, e in tensors.items()}


def read_checkpoint(prefix, names=None):
    """{name: np.ndarray} of every tensor (or of `names`) of the checkpoint at `prefix`.

    Arrays have the stored dtype (little-endian), except bfloat16, widened exactly to float32,
    and string, an object array of bytes; a scalar is a 0-d array. Every checksum is verified.
    Raises ValueError naming the file and the tensor on any corruption, missing or truncated
    file, unknown name or unsupported feature.
    """
    prefix = _prefix(prefix)
    n_shards, tensors = _read_index(prefix)
    if names is None:
        names = list(tensors)
    unknown = [n for n in names if n not in tensors]
    if unknown:
        raise ValueError(f"{prefix}.index has no tensor named {unknown}")
    return {name: _read_tensor(prefix, n_shards, name, tensors[name]) for name in names}
