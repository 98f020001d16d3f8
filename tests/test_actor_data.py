"""The run's data travels to the actors with the ClientApp: they train on what the driver built.

An actor that loads and partitions the dataset itself imports scikit-learn (the digits) and
flwr-datasets (the partitioners, with Hugging Face ``datasets``, pandas and seaborn): 3-4 s of its
first message on a 2-core machine. With the partitions drawn in the driver
(:meth:`FederatedData.with_drawn_partitions`) the data reads the same in any process, without them.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsplit.config import load_config
from fedsplit.data import make_federated_data
from fedsplit.learning import config_to_json, task_for
from fedsplit.learning.task import provide_data
from tests.conftest import fresh_interpreter_json

HEAVY = ("sklearn", "flwr_datasets", "datasets")


def partitions_of(data) -> list[tuple[np.ndarray, ...]]:  # noqa: ANN001 - FederatedData
    out = []
    for pid in range(data.num_partitions):
        train, val = data.partition(pid)
        out.append((train.x.numpy(), train.y.numpy(), val.x.numpy(), val.y.numpy()))
    return out


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "shards"])
def test_drawn_partitions_read_as_drawn_here_in_a_process_without_the_partitioning_libraries(tmp_path, partitioner):
    cfg = load_config(None, [f"data.partitioner={partitioner}", "devices={laptop=7}"])
    data = make_federated_data(cfg)
    drawn = data.with_drawn_partitions()
    assert drawn.partitions_drawn and not data.partitions_drawn
    assert drawn.with_drawn_partitions() is drawn
    assert drawn.server_test.x is data.server_test.x  # shared, not copied
    expected = partitions_of(data)
    (tmp_path / "data.pkl").write_bytes(pickle.dumps(drawn))
    probe = (
        "import json, pickle, sys\n"
        "import numpy as np\n"
        f"data = pickle.loads(open({str(tmp_path / 'data.pkl')!r}, 'rb').read())\n"
        "arrays = {}\n"
        "for pid in range(data.num_partitions):\n"
        "    (train, val) = data.partition(pid)\n"
        "    for name, t in (('tx', train.x), ('ty', train.y), ('vx', val.x), ('vy', val.y)):\n"
        "        arrays[f'{name}{pid}'] = t.numpy()\n"
        f"np.savez({str(tmp_path / 'read.npz')!r}, **arrays)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    assert fresh_interpreter_json(probe) == []
    read = np.load(tmp_path / "read.npz")
    for pid, parts in enumerate(expected):
        for name, array in zip(("tx", "ty", "vx", "vy"), parts):
            assert np.array_equal(read[f"{name}{pid}"], array), (pid, name)


def test_a_process_builds_its_task_on_the_data_provided_and_refuses_data_of_another_size(tmp_path):
    cfg = load_config(None, ["devices={laptop=5}", f"out_dir='{tmp_path}'"])
    config_json = config_to_json(cfg)
    drawn = make_federated_data(cfg).with_drawn_partitions()
    provide_data(config_json, drawn)
    assert task_for(config_json).data is drawn
    provide_data(config_json, make_federated_data(cfg))  # built already: no effect
    assert task_for(config_json).data is drawn
    other = load_config(None, ["devices={laptop=6}", f"out_dir='{tmp_path}'"])
    provide_data(config_to_json(other), drawn)
    with pytest.raises(ValueError, match="the data handed over has 5 partitions, the run 6 terminals"):
        task_for(config_to_json(other))


def test_the_app_refuses_data_without_its_configuration():
    from fedsplit.clients.app import make_client_app

    cfg = load_config(None, ["devices={laptop=2}"])
    with pytest.raises(ValueError, match="data is the data of config_json, which was not given"):
        make_client_app(data=make_federated_data(cfg))


def test_actors_train_on_the_data_the_driver_sent_with_the_app(ray_session, tmp_path):
    from fedsplit.clients.app import make_client_app
    from fedsplit.clients.arrays import array_record_from_state
    from fedsplit.devices import Population, resolve_profiles
    from fedsplit.simulation.engine import RayEngine

    # a configuration no warm actor has built a task for (out_dir is part of it)
    cfg = load_config(None, ["model.name=mlp", "devices={laptop=3}", "train.local_epochs=1", f"out_dir='{tmp_path}'"])
    config_json = config_to_json(cfg)

    def probe(msg: Message, context: Context, call_next) -> Message:  # noqa: ANN001 - Flower's next handler
        reply = call_next(msg, context)
        data = task_for(config_json).data
        reply.content["probe"] = MetricRecord({"drawn": int(data.partitions_drawn), "sent": int(data.server_test.x.shape[0])})
        return reply

    drawn = make_federated_data(cfg).with_drawn_partitions()
    app = make_client_app(mods=[probe], config_json=config_json, data=drawn)
    arrays = array_record_from_state(task_for(config_json).initial_state())
    with RayEngine(app, Population(cfg.devices, resolve_profiles(cfg.profiles)), num_actors=1) as engine:
        grid = engine.grid()
        replies = grid.send_and_receive([
            Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}), dst_node_id=n, message_type="train", group_id="1")
            for n in grid.get_node_ids()
        ])
    assert [r.has_error() for r in replies] == [False] * 3
    assert [dict(r.content["probe"]) for r in replies] == [{"drawn": 1, "sent": len(drawn.server_test)}] * 3


def test_a_run_on_the_data_sent_equals_a_run_whose_actors_load_it_themselves(ray_session, tmp_path, monkeypatch):
    import fedsplit.simulation.runner as runner

    def final_state(name: str, ship: bool) -> dict[str, torch.Tensor]:
        monkeypatch.setattr(runner, "ACTOR_DATA_MAX_PARTITIONS", 256 if ship else 0)
        cfg = load_config(None, ["model.name=mlp", "devices={laptop=4}", "rounds=2", "train.local_epochs=1", "progress=false",
                                 "data.partitioner=dirichlet", f"out_dir='{tmp_path / name}'"])
        return runner.simulate(cfg, write=False).session.final_state

    sent, loaded = final_state("sent", True), final_state("loaded", False)
    assert sent.keys() == loaded.keys()
    assert all(torch.equal(torch.as_tensor(sent[k]), torch.as_tensor(loaded[k])) for k in sent)


def test_only_small_data_of_a_pool_is_sent(monkeypatch):
    import fedsplit.simulation.runner as runner

    data = make_federated_data(load_config(None, ["devices={laptop=3}"]))
    assert runner.data_for_actors(data).partitions_drawn
    monkeypatch.setattr(runner, "ACTOR_DATA_MAX_BYTES", data.nbytes - 1)
    assert runner.data_for_actors(data) is None
    generated = make_federated_data(load_config(None, ["devices={laptop=3}", "data.name=synthetic", "data.samples_per_client=20"]))
    assert generated.is_generated and runner.data_for_actors(generated) is None
