import msgspec
import numpy as np
import pytest

from pdlink.cloud.kv.snapshot import KVHeader, KVSnapshot, KVSnapshotError, decode_header


def make(n=37, layers=3, heads=2, dim=8, seed=0):
    data = np.random.default_rng(seed).standard_normal((layers, 2, n, heads, dim)).astype(np.float32)
    return KVSnapshot.build(model_id="m", token_ids=range(n), data=data, page_size=16)


def test_round_trip_keeps_header_and_data():
    snap = make()
    back = KVSnapshot.from_bytes(snap.to_bytes())
    assert back.header == snap.header
    assert np.array_equal(back.data, snap.data)
    assert back.num_tokens == 37


def test_layer_offsets_follow_from_length_heads_dim_and_dtype():
    snap = make(n=10, layers=4, heads=3, dim=8)
    per_layer = 2 * 10 * 3 * 8 * 4
    assert snap.layer_nbytes == per_layer
    assert [snap.layer_offset(i) for i in range(4)] == [i * per_layer for i in range(4)]
    flat = snap.data.reshape(-1).view(np.uint8)
    assert np.array_equal(flat[snap.layer_offset(2):snap.layer_offset(2) + per_layer // 2].view(np.float32),
                          snap.data[2, 0].reshape(-1))
    with pytest.raises(IndexError):
        snap.layer_offset(4)


def test_checksum_mismatch_is_refused():
    blob = bytearray(make().to_bytes())
    blob[-5] ^= 0xFF
    with pytest.raises(KVSnapshotError, match="checksum mismatch"):
        KVSnapshot.from_bytes(bytes(blob))
    snap = make()
    snap.data[0, 0, 0, 0, 0] += 1
    with pytest.raises(KVSnapshotError, match="checksum"):
        snap.verify()


def test_truncated_and_oversized_input_is_refused():
    blob = make().to_bytes()
    with pytest.raises(KVSnapshotError, match="payload has"):
        KVSnapshot.from_bytes(blob[:-4])
    with pytest.raises(KVSnapshotError, match="too short"):
        KVSnapshot.from_bytes(b"\x01")
    with pytest.raises(KVSnapshotError, match="out of range"):
        KVSnapshot.from_bytes(b"\xff\xff\xff\x7f" + b"{}")


@pytest.mark.parametrize("field,value,message", [
    ("num_layers", 0, "num_layers"), ("head_dim", -1, "head_dim"), ("dtype", "int8", "dtype"),
    ("checksum", "xyz", "checksum"), ("token_ids", [], "token_ids"), ("model_id", "", "model_id"),
])
def test_bad_metadata_names_the_field(field, value, message):
    fields = msgspec.structs.asdict(make().header) | {field: value}
    with pytest.raises(KVSnapshotError, match=message):
        decode_header(msgspec.json.encode(fields))


def test_unknown_or_mistyped_header_fields_are_refused():
    fields = msgspec.structs.asdict(make().header)
    with pytest.raises(KVSnapshotError, match="bad snapshot header"):
        decode_header(msgspec.json.encode(fields | {"extra": 1}))
    with pytest.raises(KVSnapshotError, match="bad snapshot header"):
        decode_header(msgspec.json.encode(fields | {"num_layers": "3"}))


def test_build_checks_the_array_shape():
    with pytest.raises(KVSnapshotError, match="layers, 2, tokens"):
        KVSnapshot.build(model_id="m", token_ids=[1], data=np.zeros((2, 3, 1, 1, 1), np.float32), page_size=16)
    with pytest.raises(KVSnapshotError, match="token_ids has 2"):
        KVSnapshot.build(model_id="m", token_ids=[1, 2], data=np.zeros((2, 2, 1, 1, 1), np.float32), page_size=16)
    assert isinstance(make().header, KVHeader)
