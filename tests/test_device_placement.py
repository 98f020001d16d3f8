"""Device placement: every tensor a terminal computes with is on the device of its process.

:func:`fedsplit.clients.app._device` is the one function that chooses the device. These tests
point it at PyTorch's ``meta`` device (tensors with shapes and no data, available on any machine)
and catch the model, or split learning's part, at the moment it meets its inputs: the part and
the batch must both be on ``meta``. On the CPU-only code before issue #18, split learning's parts
and batches stayed on the CPU whatever ``_device`` said (its test fails there). The real compute
on CUDA, compared with the CPU, is in ``tests/test_gpu.py``.

Also: the peak CUDA memory a reply reports (``gpu-mem-bytes``) reaches the ledger and the run
summary, per device class.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

import fedsplit.clients.app as client_app
import fedsplit.clients.split_client as split_client
import fedsplit.clients.privacy_mod as privacy_mod
from fedsplit.clients.arrays import array_record_from_state
from fedsplit.config import load_config
from fedsplit.learning import config_to_json, task_for
from fedsplit.learning import task as task_module

META = torch.device("meta")
# Loading real weights into a meta model is a no-op, which is all these tests need.
pytestmark = pytest.mark.filterwarnings("ignore:.*meta parameter:UserWarning")


class Seen(Exception):
    """Raised by a spy once it has recorded where the tensors it was handed live."""


def _devices(module: torch.nn.Module, *tensors: object) -> dict[str, str]:
    """Device type of ``module``'s parameters and of each tensor argument (numpy: ``numpy``)."""
    found = {"module": next(module.parameters()).device.type}
    for i, value in enumerate(tensors):
        found[f"input{i}"] = value.device.type if isinstance(value, torch.Tensor) else type(value).__name__
    return found


@pytest.fixture
def config_json():
    """A split-capable configuration of its own (its cached task is dropped afterwards, since the
    tests move its model to ``meta``, which discards the weights)."""
    cfg = load_config(
        None,
        [
            "seed=1818",
            "model.name=fedavg-cnn",
            "devices={laptop = 2}",
            "train.batch_size=32",
            "train.local_epochs=1",
            "training.mode=sl-ushape",
            "split.cut=features.2,classifier.2",
        ],
    )
    text = config_to_json(cfg)
    yield text
    task = task_module._TASKS.pop(text, None)
    for key in [k for k in split_client._PARTS if k[0] == id(task) or k[2] == "meta"]:
        del split_client._PARTS[key]


def _context(pid: int = 0) -> Context:
    return Context(run_id=1, node_id=pid + 1, node_config={"partition-id": pid, "num-partitions": 2}, state=RecordDict(), run_config={})


def _message(content: RecordDict, message_type: str) -> Message:
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    msg = Message(content, dst_node_id=1, message_type=message_type, group_id="1")
    msg.metadata.__dict__["_message_id"] = "m"
    return msg


def _begin(config_json: str) -> Message:
    weights = task_for(config_json).initial_state()  # the terminal loads the keys of its parts
    config = ConfigRecord(
        {"op": "begin", "server-round": 1, "cut": "features.2,classifier.2", "lr": 0.05, "momentum": 0.9,
         "weight-decay": 0.0, "batch-size": 32, "local-epochs": 1, "seed": 1818, "noise-std": 0.1}
    )
    return _message(RecordDict({"weights": array_record_from_state(weights), "config": config}), "train.split")


def _split_app(config_json: str):  # noqa: ANN202
    """The real ClientApp; an exception becomes an error reply, as on the engine."""
    from fedsplit.simulation.engine import run_client_app

    app = client_app.make_client_app(mods=[], config_json=config_json)
    return lambda msg, context: run_client_app(app, msg, context)[0]


def test_device_comes_from_one_function(monkeypatch):
    monkeypatch.setattr(client_app, "_device", lambda: META)
    assert split_client.terminal_device() == META


def test_split_learning_forwards_parts_and_batches_on_the_terminal_device(monkeypatch, config_json):
    seen: list[dict[str, str]] = []

    def spy(part, x, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(_devices(part, x))
        raise Seen

    monkeypatch.setattr(client_app, "_device", lambda: META)
    monkeypatch.setattr(split_client, "client_forward", spy)
    reply = _split_app(config_json)(_begin(config_json), _context())
    assert reply.has_error() and "Seen" in reply.error.reason
    assert seen == [{"module": "meta", "input0": "meta"}]


def test_split_learning_backward_and_head_steps_run_on_the_terminal_device(monkeypatch, config_json):
    app = _split_app(config_json)
    context = _context()
    first = app(_begin(config_json), context)  # a real begin on the CPU: the terminal's state
    assert not first.has_error(), first.error.reason
    seen: list[tuple[str, dict[str, str]]] = []

    def head_spy(part, activations, labels, optimizer=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(("head", _devices(part, labels)))
        raise Seen

    def backward_spy(part, x, grad, optimizer=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(("step", _devices(part, x)))
        raise Seen

    monkeypatch.setattr(client_app, "_device", lambda: META)
    monkeypatch.setattr(split_client, "client_head_step", head_spy)
    monkeypatch.setattr(split_client, "client_backward_recompute", backward_spy)
    acts = first.content.array_records["activations"]["cut"].numpy()
    for op, name in (("head", "activations"), ("step", "gradient")):
        content = RecordDict({name: array_record_from_state({"cut": np.zeros((acts.shape[0], 512), np.float32) if op == "head" else acts}),
                              "config": ConfigRecord({"op": op})})
        reply = app(_message(content, "train.split"), context)
        assert reply.has_error() and "Seen" in reply.error.reason
    assert seen == [("head", {"module": "meta", "input0": "meta"}), ("step", {"module": "meta", "input0": "meta"})]


@pytest.mark.parametrize("handler", ["train", "evaluate"])
def test_fedavg_trains_and_evaluates_on_the_terminal_device(monkeypatch, config_json, handler):
    seen: list[dict[str, str]] = []

    def spy(model, x, y, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(_devices(model, x, y))
        raise Seen

    monkeypatch.setattr(client_app, "_device", lambda: META)
    if handler == "train":  # the ClientApp trains with the terminal's trainer: train_local without DP or attacks
        monkeypatch.setattr(privacy_mod, "train_local", spy)
    else:
        monkeypatch.setattr(client_app, "evaluate", spy)
    task = task_for(config_json)
    arrays = array_record_from_state(task.initial_state())
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    reply = _split_app(config_json)(_message(content, handler), _context())
    assert reply.has_error() and "Seen" in reply.error.reason
    assert seen == [{"module": "meta", "input0": "meta", "input1": "meta"}]


def test_no_gpu_memory_metric_off_cuda():
    @client_app.with_gpu_memory
    def handler(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"flops": 1})}), reply_to=msg)

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tests/test_gpu.py checks the metric there")
    reply = handler(_message(RecordDict(), "train"), _context())
    assert "gpu-mem-bytes" not in reply.content.metric_records["metrics"]


def test_gpu_memory_reaches_the_ledger_and_the_summary_per_device_class():
    from fedsplit.ledger import Ledger, LedgerRow
    from fedsplit.report.run_folder import summarize
    from fedsplit.simulation.metered_grid import _gpu_mem_of

    reply = Message(RecordDict({"metrics": MetricRecord({"gpu-mem-bytes": 123_456})}), reply_to=_message(RecordDict(), "train"))
    assert _gpu_mem_of(reply) == 123_456
    ledger = Ledger()
    for pid, (device, peak) in enumerate([("jetson-nano", 5_000), ("jetson-nano", 7_000), ("laptop", 0)]):
        ledger.add(LedgerRow(round=1, phase="train", client_id=pid, device=device, status="ok", reason="", flops=1,
                             compute_s=1.0, bytes_up=1, bytes_down=1, comm_s=1.0, energy_j=1.0, gpu_mem_bytes=peak))
    ledger.close_round(1, sim_s=1.0)
    summary = summarize(ledger, wall_s=1.0)
    assert summary["max_gpu_mem_bytes"] == {"jetson-nano": 7_000}
    assert summary["devices"]["jetson-nano"]["max_gpu_mem_bytes"] == 7_000
    assert "max_gpu_mem_bytes" not in summary["devices"]["laptop"]
    cpu_only = Ledger()
    for row in ledger.rows[2:]:
        cpu_only.add(row)
    cpu_only.close_round(1, sim_s=1.0)
    assert "max_gpu_mem_bytes" not in summarize(cpu_only, wall_s=1.0)


def test_terminals_in_the_servers_process_do_not_move_the_servers_model(monkeypatch, tmp_path):
    """The serial engine runs ClientApps in the server's process, on the same cached task; they move
    its model to their device. The server evaluates a CPU copy of its own, so its evaluation still
    runs (here the terminals' "device" is ``meta``, whose replies cannot be read: the run ends for
    want of updates, not with the server's model on a device its test set is not on)."""
    from fedsplit.simulation.loop import EmptyRoundsError
    from fedsplit.simulation.runner import simulate

    monkeypatch.setattr(client_app, "_device", lambda: META)
    cfg = load_config(None, ["seed=5", "model.name=mlp", "model.hidden=8", "devices={laptop = 2}", "rounds=1",
                             "engine.name=serial", "progress=false", f"out_dir={tmp_path}"])
    try:
        with pytest.raises(EmptyRoundsError, match="without aggregating any update"):
            simulate(cfg)
    finally:
        task_module._TASKS.pop(config_to_json(cfg), None)  # its model is on meta now
