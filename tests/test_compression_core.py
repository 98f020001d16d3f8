"""Core compression: round trips, exact byte counts, unbiasedness, error feedback, config."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from fedsplit.compression import (
    BroadcastReference,
    Codec,
    CompressionConfig,
    DecodeLimits,
    EncodeContext,
    PayloadError,
    TensorSpec,
    WireSpec,
    apply_downlink,
    apply_update,
    available_codecs,
    check_arrays,
    compress_with_feedback,
    decode_update,
    dense_nbytes,
    encode_update,
    framing_overhead,
    kept_count,
    make_codec,
    model_update,
    register_codec,
    specs_of,
    summarize_traffic,
    TrafficRecord,
    unregister_codec,
    warmup_density,
)
from fedsplit.compression.bitpack import (
    BodyReader,
    decode_sorted_indices,
    encode_sorted_indices,
    pack_uint,
    packed_nbytes,
    sorted_indices_nbytes,
    unpack_uint,
)
from fedsplit.compression.payload import MAGIC

def reseal(payload: bytes | bytearray) -> bytes:
    """Recompute the CRC-32 trailer, so a deliberate corruption reaches the structural checks."""
    body = bytes(payload[:-4])
    return body + zlib.crc32(body).to_bytes(4, "little")


BUILTINS = ("identity", "fp16", "int8", "qsgd", "topk", "randk", "sign", "powersgd")
CNN_SHAPES = {
    "conv1.weight": (32, 1, 5, 5),
    "conv1.bias": (32,),
    "conv2.weight": (64, 32, 5, 5),
    "conv2.bias": (64,),
    "fc1.weight": (512, 3136),
    "fc1.bias": (512,),
    "fc2.weight": (10, 512),
    "fc2.bias": (10,),
}


def small_set(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((6, 40)).astype(np.float32),
        "b": rng.standard_normal(40).astype(np.float32),
        "steps": np.array(7, dtype=np.int64),
    }


def test_builtin_codecs_registered() -> None:
    assert set(BUILTINS) <= set(available_codecs())


@pytest.mark.parametrize("name", BUILTINS)
def test_every_codec_round_trips_shapes_and_raw_buffers(name: str) -> None:
    tensors = small_set()
    payload = encode_update(tensors, make_codec(name), EncodeContext(rng=np.random.default_rng(1)))
    out = decode_update(payload, expected=specs_of(tensors), codec=name)
    assert out.codec == name and list(out.tensors) == list(tensors)
    assert out.raw == {"steps"}
    assert out.tensors["steps"].dtype == np.int64 and int(out.tensors["steps"]) == 7
    for key in ("w", "b"):
        assert out.tensors[key].shape == tensors[key].shape and out.tensors[key].dtype == np.float32


def test_identity_is_bit_exact() -> None:
    tensors = small_set()
    tensors["w"][0, :3] = [np.float32(1e-45), np.float32(-0.0), np.float32(3.4e38)]
    out = decode_update(encode_update(tensors, make_codec("identity")))
    for key in ("w", "b"):
        assert out.tensors[key].tobytes() == tensors[key].tobytes()


def test_fp16_is_exact_on_fp16_representable_data() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((17, 9)).astype(np.float16).astype(np.float32)
    x[0, 0] = 65504.0
    out = decode_update(encode_update({"x": x}, make_codec("fp16")))
    assert out.tensors["x"].tobytes() == x.tobytes()


def test_fp16_clips_instead_of_overflowing() -> None:
    out = decode_update(encode_update({"x": np.array([1e6, -1e6], np.float32)}, make_codec("fp16")))
    assert out.tensors["x"].tolist() == [65504.0, -65504.0]


def test_int8_error_is_at_most_half_a_step() -> None:
    x = np.linspace(-3, 2, 1001, dtype=np.float32)
    out = decode_update(encode_update({"x": x}, make_codec("int8"))).tensors["x"]
    assert np.abs(out - x).max() <= 3 / 127 / 2 + 1e-6


def test_exact_byte_counts_for_a_known_tensor_set() -> None:
    w = np.zeros((4, 8), dtype=np.float32)
    w.flat[[3, 10, 11, 30]] = [5.0, -6.0, 7.0, 8.0]
    tensors = {"w": w, "b": np.arange(8, dtype=np.float32), "n": np.array(3, dtype=np.int64)}
    framing = {c: 12 + len(c) + (8 + 1 + 8) + (8 + 1 + 4) + (8 + 1 + 0) + 4 for c in BUILTINS}  # + CRC
    raw_n = 1 + 8
    expected = {
        "identity": 32 * 4 + 8 * 4,
        "fp16": 32 * 2 + 8 * 2,
        "int8": (4 + 32) + (4 + 8),
        "sign": (4 + 4) + (4 + 1),
        "qsgd": (5 + 4 + 24) + (5 + 4 + 6),  # 6-bit codes for 16 levels, one bucket each
        # k = 4 of 32: Rice b = 2 for gaps 3,6,0,18 -> 9 unary bits (2 bytes), 8 remainder bits (1 byte)
        "topk": (5 + 5 + 2 + 1 + 4 * 2) + (5 + 5 + 1 + 1 + 1 * 2),
        "randk": (13 + 4 * 4) + (13 + 1 * 4),
        "powersgd": (1 + 10 + (4 * 2 + 8 * 2) * 4) + (1 + 8 * 4),  # 4x8 rank 2 low-rank, vector dense
    }
    params = {"topk": {"density": 0.125}, "randk": {"density": 0.125}}
    for name in BUILTINS:
        payload = encode_update(tensors, make_codec(name, **params.get(name, {})))
        assert framing_overhead(tensors, name) == framing[name]
        assert len(payload) == framing[name] + expected[name] + raw_n, name
    topk = decode_update(encode_update(tensors, make_codec("topk", density=0.125))).tensors["w"]
    assert np.array_equal(topk, w)  # exactly the 4 non-zeros, exact in fp16


def test_dense_nbytes_counts_fp32_and_raw_sizes() -> None:
    tensors = small_set()
    assert dense_nbytes(tensors) == 4 * (240 + 40) + 8
    assert dense_nbytes(specs_of(tensors)) == dense_nbytes(tensors)


def _cnn_update(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * 1e-3).astype(np.float32) for k, s in CNN_SHAPES.items()}


def test_cnn_ratios_meet_the_sweep_targets() -> None:
    update = _cnn_update()
    assert sum(a.size for a in update.values()) == 1_663_370
    dense = dense_nbytes(update)
    assert dense == 1_663_370 * 4
    topk = encode_update(update, make_codec("topk", density=0.01))
    powersgd = encode_update(update, make_codec("powersgd", rank=2))
    assert dense / len(topk) >= 100
    assert dense / len(powersgd) >= 20


def _mean_of_decodes(codec: Codec, x: np.ndarray, trials: int) -> tuple[np.ndarray, np.ndarray]:
    ctx = EncodeContext(rng=np.random.default_rng(1234))
    samples = np.stack([codec.decode(memoryview(codec.encode("x", x, ctx)), x.shape) for _ in range(trials)])
    samples = samples.astype(np.float64)
    return samples.mean(axis=0), samples.std(axis=0, ddof=1)


def _max_z(mean: np.ndarray, std: np.ndarray, x: np.ndarray, trials: int) -> float:
    # Standard error of the mean, floored by float32 resolution (elements at a
    # quantisation level decode deterministically: zero variance).
    se = np.sqrt(std**2 / trials + (2e-7 * np.abs(x.astype(np.float64)) + 1e-12) ** 2)
    return float(np.max(np.abs(mean - x) / se))


@pytest.mark.parametrize(
    "codec",
    [make_codec("qsgd", levels=4, bucket_size=16), make_codec("randk", density=0.1, value_dtype="float32")],
    ids=["qsgd", "randk"],
)
def test_stochastic_codecs_are_unbiased(codec: Codec) -> None:
    x = np.random.default_rng(5).standard_normal(64).astype(np.float32)
    trials = 3000
    mean, std = _mean_of_decodes(codec, x, trials)
    # Per-element z-scores of the Monte-Carlo mean against the true value; 64 elements,
    # fixed seed: |z| < 4.5 everywhere for an unbiased codec.
    assert _max_z(mean, std, x, trials) < 4.5


def test_unbiasedness_test_detects_a_biased_codec() -> None:
    x = np.random.default_rng(5).standard_normal(64).astype(np.float32)
    mean, std = _mean_of_decodes(make_codec("qsgd", levels=4, bucket_size=16), x, 3000)
    assert _max_z(mean + 0.05, std, x, 3000) > 4.5  # a 0.05 shift is caught
    sign = make_codec("sign")
    assert not np.allclose(sign.decode(memoryview(sign.encode("x", x, EncodeContext())), x.shape), x, atol=0.05)


@pytest.mark.parametrize("name", ["topk", "randk", "qsgd", "sign", "int8", "powersgd", "fp16"])
def test_error_feedback_bookkeeping(name: str) -> None:
    codec = make_codec(name, **({"density": 0.05} if name in ("topk", "randk") else {}))
    ctx = EncodeContext(rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    residual: dict[str, np.ndarray] = {}
    total_update = {"w": np.zeros((6, 40), np.float32), "b": np.zeros(40, np.float32)}
    total_sent = {k: np.zeros_like(v) for k, v in total_update.items()}
    for _ in range(5):
        update = {"w": rng.standard_normal((6, 40)).astype(np.float32), "b": rng.standard_normal(40).astype(np.float32),
                  "steps": np.array(1, np.int64)}
        step = compress_with_feedback(update, codec, residual=residual, ctx=ctx)
        assert step.finite and step.sent is not None
        for k in ("w", "b"):
            expected_intended = update[k] + residual.get(k, 0)
            np.testing.assert_allclose(step.intended[k], expected_intended, rtol=0, atol=1e-6)
            np.testing.assert_allclose(step.residual[k] + step.sent[k], step.intended[k], rtol=2e-6, atol=1e-5)
            total_update[k] += update[k]
            total_sent[k] += step.sent[k]
        assert "steps" not in step.residual and int(step.sent["steps"]) == 1
        sent_again = decode_update(step.payload).tensors
        assert all(np.array_equal(sent_again[k], step.sent[k]) for k in step.sent)
        residual = step.residual
    for k in total_update:  # nothing is lost: sent so far + residual == sum of updates
        np.testing.assert_allclose(total_sent[k] + residual[k], total_update[k], rtol=1e-5, atol=1e-4)


def test_error_feedback_off_keeps_no_residual() -> None:
    step = compress_with_feedback(small_set(), make_codec("topk", density=0.1), residual={"w": np.ones((6, 40))},
                                  error_feedback=False)
    assert step.residual == {}
    np.testing.assert_array_equal(step.intended["w"], small_set()["w"])


def test_non_finite_update_never_enters_the_residual() -> None:
    update = small_set()
    update["w"][0, 0] = np.nan
    old = {"w": np.full((6, 40), 0.5, np.float32)}
    step = compress_with_feedback(update, make_codec("identity"), residual=old)
    assert not step.finite and step.sent is None
    np.testing.assert_array_equal(step.residual["w"], old["w"])
    with pytest.raises(PayloadError, match="NaN/Inf"):
        decode_update(step.payload)


def test_every_single_bit_flip_is_rejected() -> None:
    payload = encode_update(small_set(), make_codec("topk", density=0.2))
    for pos in range(0, len(payload), 3):
        for bit in (0, 5):
            bad = bytearray(payload)
            bad[pos] ^= 1 << bit
            with pytest.raises(PayloadError):
                decode_update(bytes(bad), expected=specs_of(small_set()))


def test_mismatched_residual_is_ignored() -> None:
    step = compress_with_feedback({"w": np.ones(4, np.float32)}, make_codec("identity"),
                                  residual={"w": np.ones(5, np.float32), "gone": np.ones(2, np.float32)})
    np.testing.assert_array_equal(step.intended["w"], np.ones(4))


def test_powersgd_warm_start_converges_on_a_low_rank_matrix() -> None:
    rng = np.random.default_rng(0)
    m = (rng.standard_normal((50, 2)) @ rng.standard_normal((2, 80))).astype(np.float32)
    codec, ctx = make_codec("powersgd", rank=2), EncodeContext(rng=np.random.default_rng(1))
    errors = []
    for _ in range(4):
        out = codec.decode(memoryview(codec.encode("m", m, ctx)), m.shape)
        errors.append(float(np.linalg.norm(out - m) / np.linalg.norm(m)))
    assert ctx.state["m"].shape == (80, 2)
    assert errors[-1] < 1e-4 and errors[-1] <= errors[0]


def test_model_update_and_apply_update_are_inverse() -> None:
    ref = small_set(0)
    local = {k: (v + 1 if v.dtype.kind == "f" else v + 3) for k, v in ref.items()}
    upd = model_update(local, ref)
    assert int(upd["steps"]) == 10 and upd["w"].dtype == np.float32
    rebuilt = apply_update(ref, upd)
    for k in ref:
        np.testing.assert_allclose(rebuilt[k], local[k], rtol=1e-6)
        assert rebuilt[k].dtype == ref[k].dtype
    with pytest.raises(ValueError, match="missing"):
        model_update({"w": local["w"]}, ref)


def test_downlink_reference_tracks_the_global_model_and_replicas_match() -> None:
    rng = np.random.default_rng(0)
    glob = {"w": rng.standard_normal((20, 30)).astype(np.float32), "n": np.array(0, np.int64)}
    server = BroadcastReference(make_codec("topk", density=0.05), error_feedback=True)
    replica = None
    for r in range(1, 6):
        step = server.advance(r, glob)
        if step.base_round is None:
            replica = {k: v.copy() for k, v in step.reference.items()}
        else:
            assert step.base_round == r - 1 and len(step.payload) < dense_nbytes(glob) / 5
            replica = apply_downlink(replica, step.payload)
        assert all(replica[k].tobytes() == step.reference[k].tobytes() for k in glob)  # bit-identical
        np.testing.assert_allclose(step.reference["w"] + server.residual.get("w", 0), glob["w"], atol=1e-5)
        assert int(step.reference["n"]) == int(glob["n"])
        glob = {"w": glob["w"] + rng.standard_normal((20, 30)).astype(np.float32) * 0.1, "n": glob["n"] + 1}


def test_truncated_payloads_are_rejected_at_every_length() -> None:
    tensors = small_set()
    for name in BUILTINS:
        payload = encode_update(tensors, make_codec(name))
        for cut in range(0, len(payload), max(1, len(payload) // 97)):
            with pytest.raises(PayloadError):
                decode_update(payload[:cut], expected=specs_of(tensors))


def test_structural_corruptions_are_rejected_with_reasons() -> None:
    tensors = small_set()
    specs = specs_of(tensors)
    payload = encode_update(tensors, make_codec("topk", density=0.1))
    cases = {
        "trailing": (reseal(payload[:-4] + b"\0" + payload[-4:]), "trailing"),
        "magic": (reseal(b"XXXX" + payload[4:]), "magic"),
        "version": (reseal(payload[:4] + b"\x09" + payload[5:]), "version"),
        "flipped value byte": (payload[:-8] + bytes([payload[-8] ^ 1]) + payload[-7:], "checksum"),
        "appended byte": (payload + b"\0", "checksum"),
    }
    for _, (bad, reason) in cases.items():
        with pytest.raises(PayloadError, match=reason):
            decode_update(bad, expected=specs)
    with pytest.raises(PayloadError, match="shape"):
        decode_update(payload, expected={**specs, "w": TensorSpec((40, 6), "<f4")})
    with pytest.raises(PayloadError, match="expected 'identity'"):
        decode_update(payload, expected=specs, codec="identity")
    with pytest.raises(PayloadError, match="exceeds the limit"):
        decode_update(payload, limits=DecodeLimits(max_payload_bytes=len(payload) - 1))
    with pytest.raises(PayloadError, match="elements"):
        decode_update(payload, limits=DecodeLimits(max_elements=100))
    with pytest.raises(PayloadError, match="unexpected tensor"):
        decode_update(payload, expected={"w": specs["w"], "b": specs["b"], "other": specs["steps"]})
    with pytest.raises(PayloadError, match="raw"):
        decode_update(payload, expected={**specs, "steps": TensorSpec((), "<i4")})


def test_huge_declared_shape_is_rejected_without_allocating() -> None:
    payload = bytearray(encode_update({"x": np.zeros(4, np.float32)}, make_codec("topk")))
    # header 12 + "topk" 4 | u16 name len, u8 kind, u8 ndim=1 | "x" | u32 dim
    dim_at = 12 + 4 + 4 + 1
    payload[dim_at : dim_at + 4] = (0xFFFFFFFF).to_bytes(4, "little")
    with pytest.raises(PayloadError, match="elements"):
        decode_update(reseal(payload))


@pytest.mark.parametrize("name", BUILTINS)
def test_body_length_must_match_the_claimed_shape_exactly(name: str) -> None:
    """One byte more or less than the shape and the body's header imply: refused, with both lengths named."""
    x = small_set()["w"]
    body = make_codec(name).encode("w", x, EncodeContext())
    for bad in (body + b"\0", body[:-1]):
        with pytest.raises(PayloadError, match=r"has \d+ bytes after its header, expected \d+ for "):
            make_codec(name).decode(memoryview(bad), x.shape)


@pytest.mark.parametrize(("n", "bucket"), [(20, 8), (16, 8), (5, 512), (1, 1)])
def test_qsgd_decode_scales_every_bucket_including_a_partial_last_one(n: int, bucket: int) -> None:
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    codec = make_codec("qsgd", levels=4, bucket_size=bucket)
    body = codec.encode("x", x, EncodeContext())
    nb = -(-n // bucket)
    scale = np.frombuffer(body[5 : 5 + 4 * nb], "<f4")
    codes = unpack_uint(body[5 + 4 * nb :], n, 4).astype(np.float32)  # 4 levels: 4-bit codes
    reference = (codes - 4) * (scale[np.arange(n) // bucket] / np.float32(4))
    np.testing.assert_array_equal(codec.decode(memoryview(body), (n,)), reference)


def test_raw_body_must_match_the_expected_spec() -> None:
    """A floating tensor must travel coded where the receiver expects one; a raw body is exactly 1 + itemsize * n bytes."""
    x = np.arange(7, dtype=np.float32)

    def raw_payload(body: bytes, n: int = 7) -> bytes:
        record = (4).to_bytes(2, "little") + bytes([1, 1]) + b"fc.b" + n.to_bytes(4, "little")
        header = MAGIC + bytes([1, 8]) + b"\0\0" + (1).to_bytes(4, "little") + b"identity"
        return reseal(header + record + len(body).to_bytes(4, "little") + body + b"\0" * 4)

    as_raw = raw_payload(bytes([11]) + x.tobytes())  # dtype code 11: <f4
    assert decode_update(as_raw).raw == {"fc.b"}  # without a spec, a raw float32 is well-formed
    with pytest.raises(PayloadError, match="expected coded float32"):
        decode_update(as_raw, expected={"fc.b": TensorSpec((7,), "<f4")})
    with pytest.raises(PayloadError, match="expected 28 for 7 values of 4 bytes"):
        decode_update(raw_payload(bytes([11]) + x.tobytes() + b"\0"))


def test_index_stream_length_is_known_from_its_header() -> None:
    idx = np.array([3, 10, 11, 30])
    stream = encode_sorted_indices(idx)
    b, unary_bits = stream[0], int.from_bytes(stream[1:5], "little")
    assert len(stream) == sorted_indices_nbytes(4, b, unary_bits)
    # 4 gaps below 32 have Rice quotients summing to at most (32 - 4) >> b: one unary bit more is refused
    # before the stream is read, even with enough bytes after it.
    too_many = 4 + ((32 - 4) >> b) + 1
    bad = stream[:1] + too_many.to_bytes(4, "little") + stream[5:] + b"\xff" * 8
    with pytest.raises(PayloadError, match="unary index stream"):
        decode_sorted_indices(BodyReader(bad), 4, 32)


def test_check_arrays_reasons() -> None:
    specs = specs_of(small_set())
    good = small_set()
    assert check_arrays(good, specs) is None
    assert "missing" in check_arrays({k: v for k, v in good.items() if k != "b"}, specs)
    assert "shape" in check_arrays({**good, "b": np.zeros(3, np.float32)}, specs)
    assert "dtype" in check_arrays({**good, "b": good["b"].astype(np.float64)}, specs)
    bad = small_set()
    bad["w"][1, 1] = np.inf
    assert "NaN/Inf" in check_arrays(bad, specs)


def test_bitpack_round_trips() -> None:
    rng = np.random.default_rng(0)
    for width in range(33):
        for n in (0, 1, 7, 8, 9, 257):
            codes = rng.integers(0, 2**width, size=n, dtype=np.uint64) if width else np.zeros(n, np.uint64)
            packed = pack_uint(codes, width)
            assert len(packed) == packed_nbytes(n, width)
            np.testing.assert_array_equal(unpack_uint(packed, n, width), codes)
    idx = np.sort(rng.choice(100_000, 1000, replace=False))
    reader = BodyReader(encode_sorted_indices(idx))
    np.testing.assert_array_equal(decode_sorted_indices(reader, 1000, 100_000), idx)
    reader.finish()


def test_kept_count() -> None:
    assert kept_count(0, 0.5) == 0
    assert kept_count(10, 0.01) == 1
    assert kept_count(1000, 0.01) == 10
    assert kept_count(5, 1.0) == 5


def test_warmup_schedule_decays_to_target() -> None:
    dens = [warmup_density(r, 0.001, 4, 0.25) for r in range(1, 8)]
    assert dens[0] == pytest.approx(0.25)
    assert dens[4:] == [0.001, 0.001, 0.001]
    assert all(a > b for a, b in zip(dens[:5], dens[1:5]))
    assert dens[2] == pytest.approx(math.sqrt(0.25 * 0.001))
    assert warmup_density(3, 0.01, 0, 0.25) == 0.01


def test_config_from_dict_and_wire_spec() -> None:
    cfg = CompressionConfig.from_dict({"uplink": "topk", "density": 0.01, "error_feedback": True, "warmup_rounds": 2})
    assert cfg.to_dict()["uplink"] == "topk"
    assert CompressionConfig.from_dict(cfg.to_dict()) == cfg
    spec = cfg.wire_spec(1)
    assert spec["uplink"] == {"codec": "topk", "density": 0.25} and spec["downlink"] is None
    assert cfg.wire_spec(3)["uplink"]["density"] == 0.01
    import json

    parsed = WireSpec.from_json(json.dumps(cfg.wire_spec(5)))
    assert parsed.uplink.params() == {"density": 0.01, "value_dtype": "float16"} and parsed.error_feedback
    q = CompressionConfig.from_dict({"uplink": "qsgd", "levels": 8, "downlink": "powersgd", "rank": 3,
                                     "downlink_options": {"rank": 4}})
    assert q.wire_spec(1)["uplink"] == {"codec": "qsgd", "levels": 8, "bucket_size": 512}
    assert q.wire_spec(1)["downlink"] == {"codec": "powersgd", "rank": 4}
    assert CompressionConfig.from_dict({"downlink": "none"}).downlink is None


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"uplink": "zip"}, ["compression.uplink", "'zip'", "topk"]),
        ({"uplink": "topk", "density": 0.0}, ["compression.density", "0.0", "(0.0, 1.0]"]),
        ({"uplink": "topk", "density": 2}, ["compression.density", "2"]),
        ({"levels": 500}, ["compression.levels", "500", "[1, 127]"]),
        ({"rank": 0}, ["compression.rank"]),
        ({"value_dtype": "int4"}, ["compression.value_dtype", "'int4'", "'float16'"]),
        ({"error_feedback": "yes"}, ["compression.error_feedback", "'yes'", "true or false"]),
        ({"uplink": "qsgd", "warmup_rounds": 3}, ["compression.warmup_rounds", "qsgd", "topk"]),
        ({"warmup_rounds": -1}, ["compression.warmup_rounds", "-1"]),
        ({"downlink": "lz4"}, ["compression.downlink", "'lz4'"]),
        ({"densty": 0.1}, ["compression.densty", "unknown setting", "density"]),
        ({"uplink": "topk", "codec_options": {"k": 3}}, ["compression.codec_options", "'k'", "density"]),
        ({"downlink": "topk", "downlink_options": {"density": -1}}, ["compression.downlink_options", "density"]),
    ],
)
def test_config_errors_name_field_value_and_allowed(bad: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        CompressionConfig.from_dict(bad)
    for word in words:
        assert word in str(info.value)


class _HalfCodec(Codec):
    """A user codec: halves the values (to prove it is really used)."""

    name = "test-half"

    def __init__(self, factor: float = 0.5) -> None:
        self.factor = factor

    def params(self) -> dict[str, float]:
        return {"factor": self.factor}

    def encode(self, name: str, x: np.ndarray, ctx: EncodeContext) -> bytes:
        return (x * np.float32(self.factor)).astype("<f4").tobytes()

    def decode(self, body: memoryview, shape: tuple[int, ...]) -> np.ndarray:
        if len(body) != 4 * int(np.prod(shape)):
            raise PayloadError("wrong length")
        return np.frombuffer(body, "<f4").reshape(shape).astype(np.float32)


def test_user_codec_registration() -> None:
    register_codec("test-half", _HalfCodec)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_codec("test-half", _HalfCodec)
        cfg = CompressionConfig.from_dict({"uplink": "test-half", "codec_options": {"factor": 0.25}})
        codec = cfg.make_uplink_codec(1)
        out = decode_update(encode_update({"x": np.ones(3, np.float32)}, codec))
        assert out.codec == "test-half" and out.tensors["x"].tolist() == [0.25] * 3
    finally:
        unregister_codec("test-half")
    assert "test-half" not in available_codecs()
    with pytest.raises(PayloadError, match="unknown codec"):
        decode_update(encode_update({"x": np.ones(3, np.float32)}, _HalfCodec()))


def test_summarize_traffic() -> None:
    recs = [TrafficRecord(1, 7, "up", 100, 10_000, "topk"), TrafficRecord(1, 7, "down", 4000, 4000, "dense")]
    s = summarize_traffic(recs)
    assert s["up-ratio"] == 100 and s["down-ratio"] == 1 and s["up-bytes"] == 100
    assert recs[0].ratio == 100


@pytest.mark.parametrize("name", BUILTINS)
def test_batchnorm_statistics_travel_exactly_under_every_codec(name: str) -> None:
    """A lossy codec on BatchNorm's running variance made it negative (random-k's n/k scaling,
    top-k's error feedback re-sending old deltas onto a new reference), and the CNN's global model
    evaluated to NaN loss and 0.1 accuracy from round 2 (``compression = {uplink = 'randk',
    density = 0.1}``); the statistics' deltas now travel raw, so the rebuilt ones are the local ones."""
    rng = np.random.default_rng(5)
    reference = {
        "conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "bn.weight": np.ones(8, np.float32),
        "bn.running_mean": np.zeros(64, np.float32),
        "bn.running_var": np.ones(64, np.float32),
        "bn.num_batches_tracked": np.array(3, np.int64),
    }
    local = dict(reference, **{
        "bn.running_mean": rng.standard_normal(64).astype(np.float32),
        "bn.running_var": rng.uniform(0.05, 0.2, 64).astype(np.float32),
        "bn.num_batches_tracked": np.array(9, np.int64),
    })
    codec = make_codec(name, **({"density": 0.1} if name in ("topk", "randk") else {}))
    step = compress_with_feedback(model_update(local, reference), codec, ctx=EncodeContext(rng=np.random.default_rng(1)))
    decoded = decode_update(step.payload, expected=specs_of(reference), codec=name)
    assert decoded.raw == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    rebuilt = apply_update(reference, decoded.tensors)
    for key in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        np.testing.assert_allclose(rebuilt[key], local[key], rtol=0, atol=1e-7)
    assert not step.residual["bn.running_var"].any()  # nothing held back for a later round
    coded = encode_update({"bn.xxxxxxxxxxx": np.ones(4, np.float32)}, make_codec("identity"))  # framed as coded
    coded = reseal(coded.replace(b"bn.xxxxxxxxxxx", b"bn.running_var"))
    with pytest.raises(PayloadError, match="statistic's delta travels raw"):
        decode_update(coded, expected={"bn.running_var": TensorSpec((4,), "<f4")})
