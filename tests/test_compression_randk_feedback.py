"""Random-k under error feedback: the unbiased (n/k-scaled) codec makes the residual blow up, so
``CompressionConfig`` sends random-k unscaled whenever error feedback is on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsplit.compression import CompressionConfig, EncodeContext, WireSpec, compress_with_feedback, decode_update, make_codec


def _residual_norms(codec, rounds: int = 30, n: int = 2000) -> list[float]:
    """Norm of the EF residual after each of ``rounds`` steps of i.i.d. unit-variance updates."""
    rng = np.random.default_rng(0)
    ctx = EncodeContext(rng=np.random.default_rng(1))
    residual: dict[str, np.ndarray] = {}
    norms = []
    for _ in range(rounds):
        update = {"w": rng.standard_normal(n).astype(np.float32)}
        step = compress_with_feedback(update, codec, residual=residual, ctx=ctx)
        if not step.finite:
            norms.append(float("inf"))
            break
        residual = step.residual
        norms.append(float(np.linalg.norm(residual["w"])))
    return norms


def test_scaled_random_k_diverges_under_error_feedback() -> None:
    """The failure the config now avoids: each pick multiplies an element of the residual by
    ``1 - n/k`` (-99 here), so it grows geometrically (in training: to Inf, every update rejected)."""
    scaled = _residual_norms(make_codec("randk", density=0.01, unbiased=True))
    unscaled = _residual_norms(make_codec("randk", density=0.01, unbiased=False))
    assert scaled[-1] > 1e5 * scaled[0]
    assert scaled[-1] > 1e4 * unscaled[-1]


def test_unscaled_random_k_is_contractive_and_its_residual_stays_bounded() -> None:
    codec = make_codec("randk", density=0.01, unbiased=False)
    x = np.random.default_rng(3).standard_normal(5000).astype(np.float32)
    sent = decode_update(compress_with_feedback({"w": x}, codec, error_feedback=False).payload).tensors["w"]
    kept = sent != 0
    assert kept.sum() == 50
    np.testing.assert_array_equal(sent[kept], x[kept])  # values sent as they are
    assert np.linalg.norm(x - sent) < np.linalg.norm(x)
    # With i.i.d. updates the residual of memory random-k settles near sqrt(n / density) per unit.
    norms = _residual_norms(codec)
    assert all(np.isfinite(norms)) and max(norms) < 10 * np.sqrt(2000 * 30)


def test_scaled_random_k_is_still_unbiased_and_the_default() -> None:
    codec = make_codec("randk", density=0.1)
    assert codec.params()["unbiased"] is True
    x = np.random.default_rng(5).standard_normal(50).astype(np.float32)
    means = np.mean(
        [
            decode_update(compress_with_feedback({"w": x}, codec, error_feedback=False,
                                                  ctx=EncodeContext(rng=np.random.default_rng(s))).payload).tensors["w"]
            for s in range(4000)
        ],
        axis=0,
    )
    assert np.max(np.abs(means - x)) < 0.5  # n/k = 10: per-element std of the mean ~ 3|x|/sqrt(4000)


@pytest.mark.parametrize(
    ("settings", "unbiased"),
    [
        ({"uplink": "randk"}, False),  # error feedback is on by default
        ({"uplink": "randk", "error_feedback": True}, False),
        ({"uplink": "randk", "error_feedback": False}, True),
        ({"uplink": "randk", "codec_options": {"unbiased": True}}, True),  # an explicit choice wins
    ],
)
def test_config_sends_random_k_unscaled_under_error_feedback(settings: dict, unbiased: bool) -> None:
    cfg = CompressionConfig.from_dict(settings)
    assert cfg.uplink_params(1).get("unbiased", True) is unbiased
    assert cfg.make_uplink_codec(1).unbiased is unbiased
    # what the client builds from the train message's spec
    assert WireSpec.from_json(json.dumps(cfg.wire_spec(1))).uplink.params()["unbiased"] is unbiased


def test_downlink_random_k_follows_the_downlink_error_feedback_switch() -> None:
    on = CompressionConfig.from_dict({"downlink": "randk"})
    off = CompressionConfig.from_dict({"downlink": "randk", "downlink_error_feedback": False})
    assert on.make_downlink_codec().unbiased is False
    assert off.make_downlink_codec().unbiased is True


def test_codecs_without_feedback_params_are_unchanged() -> None:
    cfg = CompressionConfig.from_dict({"uplink": "topk", "density": 0.01})
    assert cfg.uplink_params(1) == {"density": 0.01}
    with pytest.raises(ValueError, match="unbiased"):
        make_codec("randk", unbiased=1)
