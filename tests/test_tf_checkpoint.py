"""The TensorFlow checkpoint reader against checkpoints that TensorFlow itself wrote and read back
(tests/fixtures/make_tf_checkpoints.py), and against corrupted copies of them."""
import json
import os
import shutil

import numpy as np
import pytest

from minideeplab.tf_checkpoint import _read_index, crc32c, list_variables, read_checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tf_checkpoints")
CHECKPOINTS = {"v1_sharded": "model.ckpt", "tf2_sharded": "ckpt"}


def bitwise_crc32c(data):
    """CRC-32C one bit at a time, straight from the definition (reflected polynomial
    0x82F63B78, initial and final XOR 0xFFFFFFFF): no table, no chunks."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(crc):
    """LevelDB's mask (crc32c.h): rotate right by 15, add a constant."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(buf, pos):
    value = shift = 0
    while True:
        value |= (buf[pos] & 0x7F) << shift
        shift += 7
        pos += 1
        if not buf[pos - 1] & 0x80:
            return value, pos


def expected(name):
    with open(os.path.join(FIXTURES, name, "expected.json")) as f:
        meta = json.load(f)
    with np.load(os.path.join(FIXTURES, name, "expected.npz")) as npz:
        arrays = dict(npz)
    return meta, arrays


def copy_checkpoint(name, tmp_path):
    shutil.copytree(os.path.join(FIXTURES, name), tmp_path / name)
    return str(tmp_path / name / CHECKPOINTS.get(name, "model.ckpt"))


def patch(path, position, xor):
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ xor]))


def test_crc32c_known_values():
    # The CRC catalogue's check value, and RFC 3720 (iSCSI) appendix B.4.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    assert crc32c(b"") == 0


@pytest.mark.parametrize("size", [1, 3, 4, 4095, 4096, 4097, 5003, 33333])
def test_crc32c_matches_the_definition(size):
    # Both paths (the byte loop below 4 kB, the chunked NumPy one above), with chunk counts
    # that are odd at some merge level.
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert crc32c(data) == bitwise_crc32c(data)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_list_variables_matches_tensorflow(name):
    meta, _ = expected(name)
    want = {k: (v["dtype"], tuple(v["shape"])) for k, v in meta["variables"].items()}
    assert list_variables(os.path.join(FIXTURES, name, CHECKPOINTS[name])) == want


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_values_match_tensorflow_exactly(name):
    meta, arrays = expected(name)
    got = read_checkpoint(os.path.join(FIXTURES, name, CHECKPOINTS[name]))
    assert sorted(got) == sorted(meta["variables"])
    for key, value in got.items():
        assert value.shape == tuple(meta["variables"][key]["shape"]), key
        if key in meta["strings"]:
            assert [s.hex() for s in value.reshape(-1)] == meta["strings"][key], key
        else:
            # Bytewise: keeps -0.0, NaN payloads and subnormals honest.
            assert value.dtype == arrays[key].dtype, key
            assert value.tobytes() == arrays[key].tobytes(), key
            assert value.flags.writeable, key


def test_checkpoints_cover_what_deeplab_needs():
    # The fixtures hold what the assertions above must have seen: two shards each, scalars,
    # ranks up to 4, an empty tensor, a name with slashes, the dtypes of DeepLab's checkpoints.
    for name, file in CHECKPOINTS.items():
        assert os.path.isfile(os.path.join(FIXTURES, name, f"{file}.data-00001-of-00002"))
    variables = list_variables(os.path.join(FIXTURES, "v1_sharded", "model.ckpt"))
    assert variables["xception_65/entry_flow/conv1_1/weights"] == ("float32", (3, 3, 3, 4))
    assert variables["global_step"] == ("int64", ())
    assert variables["extra/float32_empty"] == ("float32", (0, 3))
    assert {d for d, _ in variables.values()} == {"float32", "float64", "int32", "int64"}


def test_prefix_forms_and_unknown_names(tmp_path):
    prefix = os.path.join(FIXTURES, "v1_sharded", "model.ckpt")
    assert list_variables(prefix + ".index") == list_variables(prefix)
    got = read_checkpoint(prefix, names=["global_step"])
    assert list(got) == ["global_step"] and got["global_step"] == 30000
    with pytest.raises(ValueError, match=r"no tensor named \['nope'\]"):
        read_checkpoint(prefix, names=["nope"])
    with pytest.raises(ValueError, match="no checkpoint index .*model.ckpt-2.index"):
        list_variables(prefix + "-2")
    (tmp_path / "old.ckpt").write_bytes(b"V1")
    with pytest.raises(ValueError, match="V1 checkpoint"):
        read_checkpoint(tmp_path / "old.ckpt")


def test_partitioned_variable_is_refused_by_name():
    prefix = os.path.join(FIXTURES, "v1_partitioned", "model.ckpt")
    assert list_variables(prefix) == {"dense/bias": ("float32", (3,)),
                                      "partitioned/weights": ("float32", (4, 3))}
    assert read_checkpoint(prefix, names=["dense/bias"])["dense/bias"].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="'partitioned/weights' is a partitioned variable"):
        read_checkpoint(prefix)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_flipped_data_byte_names_the_tensor(name, tmp_path):
    prefix = copy_checkpoint(name, tmp_path)
    n_shards, entries = _read_index(prefix)
    for key, entry in entries.items():
        if entry.size == 0:
            continue
        shard = f"{prefix}.data-{entry.shard:05d}-of-{n_shards:05d}"
        # Middle byte: the value bytes; first byte of a string tensor: its lengths.
        for position in {entry.offset + entry.size // 2, entry.offset}:
            patch(shard, position, 0x01)
            with pytest.raises(ValueError, match="CRC32C") as error:
                read_checkpoint(prefix)
            patch(shard, position, 0x01)
            message = str(error.value)
            assert f"'{key}'" in message and os.path.basename(shard) in message, message


def test_flipped_index_byte_is_detected(tmp_path):
    prefix = copy_checkpoint("v1_sharded", tmp_path)
    index = prefix + ".index"
    size = os.path.getsize(index)
    original = read_checkpoint(prefix)
    # Every 3rd byte (all kinds: entries, restart points, trailers, block handles) and the footer.
    for position in sorted(set(range(0, size, 3)) | set(range(size - 48, size))):
        patch(index, position, 0x01)
        try:
            got = read_checkpoint(prefix)
        except ValueError as error:
            assert "model.ckpt.index" in str(error), (position, error)
        else:
            # Only the footer's zero padding (between the block handles and the magic number)
            # is not covered by a checksum, and nothing reads it.
            assert size - 48 < position < size - 8, position
            assert got.keys() == original.keys()
        patch(index, position, 0x01)


def test_missing_and_truncated_files(tmp_path):
    prefix = copy_checkpoint("v1_sharded", tmp_path)
    n_shards, entries = _read_index(prefix)
    last = max((e.offset + e.size, k) for k, e in entries.items() if e.shard == 1)[1]
    shard = f"{prefix}.data-00001-of-00002"
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 1)
    with pytest.raises(ValueError, match=f"data-00001-of-00002: tensor '{last}' .*truncated"):
        read_checkpoint(prefix)
    os.remove(shard)
    assert len(list_variables(prefix)) == len(entries)  # the index alone lists them
    with pytest.raises(ValueError, match="data-00001-of-00002: missing data shard 1 of 2"):
        read_checkpoint(prefix)
    with open(prefix + ".index", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match="model.ckpt.index: .*magic number: truncated"):
        list_variables(prefix)


def rewrite_index(prefix, edit):
    """Apply `edit(data, block_offset, block_size)` to the index's bytes, then make the edited
    block's checksum right again, so that only what `edit` changed is wrong."""
    with open(prefix + ".index", "rb") as f:
        data = bytearray(f.read())
    offset, size = edit(data)
    data[offset + size + 1:offset + size + 5] = masked(
        bitwise_crc32c(data[offset:offset + size + 1])).to_bytes(4, "little")
    with open(prefix + ".index", "wb") as f:
        f.write(data)


def test_snappy_compressed_block_is_refused(tmp_path):
    def snappy_index_block(data):
        _, pos = varint(data, varint(data, len(data) - 48)[1])  # skip the metaindex handle
        offset, pos = varint(data, pos)
        size, _ = varint(data, pos)
        data[offset + size] = 1  # the block's compression type: Snappy
        return offset, size

    prefix = copy_checkpoint("v1_sharded", tmp_path)
    rewrite_index(prefix, snappy_index_block)
    with pytest.raises(ValueError, match="index block at offset .* is Snappy-compressed"):
        list_variables(prefix)


def test_unsupported_dtype_is_listed_but_refused(tmp_path):
    def variant_global_step(data):
        # The only data block starts the file and ends 5 bytes (its trailer) before the
        # metaindex block; global_step's entry is stored with its whole key, then field 1 (dtype).
        meta_offset, _ = varint(data, len(data) - 48)
        position = data.index(b"global_step\x08\x09") + len("global_step") + 1
        data[position] = 21  # DT_VARIANT instead of DT_INT64
        return 0, meta_offset - 5

    prefix = copy_checkpoint("v1_sharded", tmp_path)
    rewrite_index(prefix, variant_global_step)
    assert list_variables(prefix)["global_step"] == ("variant", ())
    assert read_checkpoint(prefix, names=["logits/semantic/biases"])
    with pytest.raises(ValueError, match="'global_step' has dtype variant, which this reader"):
        read_checkpoint(prefix, names=["global_step"])
