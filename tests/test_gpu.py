"""The terminal's compute on CUDA equals the same compute on the CPU (run where CUDA exists).

Skipped, with the reason, on machines without CUDA (``pytest -rs`` prints it). On a GPU machine
(``experiments/device_check.sh`` runs this file) a FedAvg train message and a split-learning
``begin`` + ``step`` on the GPU reply what they reply on the CPU, within float tolerance, and a
GPU reply reports its peak CUDA memory (``gpu-mem-bytes``); the CPU one does not. TF32 is turned
off for the comparison (PyTorch allows it for cuDNN convolutions by default, 1e-3 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

import fedsplit.clients.app as client_app
from fedsplit.clients.arrays import array_record_from_state
from fedsplit.learning import task_for
from tests.test_device_placement import _begin, _context, _message, _split_app, config_json  # noqa: F401 - fixture

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here: the GPU tests run on a machine with one (experiments/device_check.sh)"
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_fp32(monkeypatch):
    """Full-precision float32 on CUDA (no TF32), so that GPU and CPU agree to rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(precision)


def _arrays(reply: Message, name: str) -> dict[str, np.ndarray]:
    assert not reply.has_error(), reply.error.reason
    return {k: v.numpy() for k, v in reply.content.array_records[name].items()}


def _close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)


def _on(monkeypatch, device: torch.device) -> None:  # noqa: ANN001
    monkeypatch.setattr(client_app, "_device", lambda: device)


def test_a_train_message_on_cuda_equals_the_cpu(monkeypatch, config_json):  # noqa: F811
    task = task_for(config_json)
    content = lambda: RecordDict(  # noqa: E731 - a fresh message per device
        {"arrays": array_record_from_state(task.initial_state()), "config": ConfigRecord({"server-round": 1, "lr": 0.05})}
    )
    app = _split_app(config_json)
    replies = {}
    for device in (CPU, CUDA):
        _on(monkeypatch, device)
        replies[device.type] = app(_message(content(), "train"), _context())
    _close(_arrays(replies["cuda"], "arrays"), _arrays(replies["cpu"], "arrays"), atol=1e-4)
    gpu_metrics = replies["cuda"].content.metric_records["metrics"]
    assert int(gpu_metrics["gpu-mem-bytes"]) > 0
    assert "gpu-mem-bytes" not in replies["cpu"].content.metric_records["metrics"]
    assert gpu_metrics["flops"] == replies["cpu"].content.metric_records["metrics"]["flops"]


def test_a_split_step_on_cuda_equals_the_cpu(monkeypatch, config_json):  # noqa: F811
    app = _split_app(config_json)
    out = {}
    for device in (CPU, CUDA):
        _on(monkeypatch, device)
        context = _context()
        first = app(_begin(config_json), context)
        acts = _arrays(first, "activations")
        middle = np.full((acts["cut"].shape[0], 512), 0.1, np.float32)  # a fixed server-middle output
        head = app(_message(RecordDict({"activations": array_record_from_state({"cut": middle}), "config": ConfigRecord({"op": "head"})}), "train.split"), context)
        grad = _arrays(head, "gradient")
        at_cut1 = {"cut": np.full(acts["cut"].shape, 0.01, np.float32)}  # a fixed server gradient
        step = app(_message(RecordDict({"gradient": array_record_from_state(at_cut1), "config": ConfigRecord({"op": "step"})}), "train.split"), context)
        out[device.type] = (acts, grad, _arrays(step, "activations"), step, head)
    for i in (0, 1, 2):  # batch 0's activations, the head's gradient, batch 1's after the step
        _close(out["cuda"][i], out["cpu"][i], atol=1e-5)
    assert int(out["cuda"][3].content.metric_records["metrics"]["gpu-mem-bytes"]) > 0
    assert out["cuda"][4].content.metric_records["metrics"]["train-loss"] == pytest.approx(
        out["cpu"][4].content.metric_records["metrics"]["train-loss"], abs=1e-5
    )
