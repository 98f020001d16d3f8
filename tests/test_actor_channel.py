"""The engine's direct channel to local actors (simulation/actor_channel.py): frames, threads,
closing, and the engine's use of it (real Ray actors)."""

from __future__ import annotations

import logging
import os
import queue
import socket
import tempfile
import threading
import time

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedsplit.devices import Population, builtin_profiles
from fedsplit.simulation.actor_channel import ActorEnd, ChannelClosed, DriverChannel, Listener, answer_chunks, recv_frame, send_frame
from fedsplit.simulation.engine import KILLED_REASON, RayEngine


def test_frames_arrive_whole_and_in_order_and_a_closed_end_is_named():
    left, right = socket.socketpair()
    sizes = [0, 1, 3 * 1024 * 1024 + 7]  # the large one is sent while the other side reads it
    sender = threading.Thread(target=lambda: [send_frame(left, bytes([n % 251]) * n) for n in sizes])
    sender.start()
    received = [recv_frame(right) for _ in sizes]
    sender.join()
    assert [len(f) for f in received] == sizes
    assert all(f == bytes([n % 251]) * n for f, n in zip(received, sizes))
    left.close()
    with pytest.raises(ChannelClosed, match="closed the channel"):
        recv_frame(right)
    right.close()


def _served(handle):
    """A driver channel to an actor end answering with ``handle`` in a thread of this process, its
    arrivals queue and that thread."""
    arrivals: queue.SimpleQueue = queue.SimpleQueue()
    listener = Listener()
    answering = threading.Thread(target=ActorEnd(listener.path).answer_all, args=(handle,), daemon=True)
    answering.start()
    return DriverChannel(listener.accept(timeout_s=10.0), arrivals), arrivals, answering


def test_answer_chunks_halve_what_is_left_and_cover_the_batch():
    assert answer_chunks(10) == [5, 3, 1, 1]
    assert answer_chunks(50) == [25, 13, 6, 3, 2, 1]
    assert answer_chunks(1) == [1] and answer_chunks(2) == [1, 1] and answer_chunks(0) == []
    for items in range(1, 300):
        sizes = answer_chunks(items)
        assert sum(sizes) == items and sizes[-1] == 1 and len(sizes) <= items.bit_length() + 1


def test_a_served_actor_answers_each_frame_in_order_in_parts_sent_as_they_are_made_and_ends_when_the_driver_closes():
    started = []
    release = threading.Event()

    def handle(frame: bytearray):
        started.append(bytes(frame))
        time.sleep(0.05)  # the next frames are sent while this one is handled
        yield bytes(frame)
        if frame == b"a":
            assert release.wait(10)  # the first part is on its way before the handler goes on
        yield bytes(frame) * 2

    channel, arrivals, answering = _served(handle)
    for payload in (b"a", b"bb", b"ccc"):
        channel.send(payload)  # none of these waits for the answer of the one before
    first = arrivals.get(timeout=10)
    assert (first[0], bytes(first[1])) == (channel, b"a")
    release.set()
    answers = [first] + [arrivals.get(timeout=10) for _ in range(5)]
    assert [(c, bytes(a)) for c, a in answers] == [
        (channel, b"a"), (channel, b"aa"), (channel, b"bb"), (channel, b"bbbb"), (channel, b"ccc"), (channel, b"cccccc"),
    ]
    assert started == [b"a", b"bb", b"ccc"]
    channel.close()
    answering.join(timeout=10)
    assert not answering.is_alive()
    closing = arrivals.get(timeout=10)  # the driver's reader reports its own end
    assert closing[0] is channel and isinstance(closing[1], ChannelClosed)
    with pytest.raises(ChannelClosed):
        channel.send(b"late")


def test_a_handler_that_raises_closes_the_channel_as_a_dead_actor_would(caplog):
    def handle(frame: bytearray) -> bytes:
        raise RuntimeError("unpicklable batch")

    channel, arrivals, answering = _served(handle)
    channel.send(b"x")
    got, answer = arrivals.get(timeout=10)
    assert got is channel and isinstance(answer, ChannelClosed)
    answering.join(timeout=10)
    assert not answering.is_alive()
    assert "a batch failed outside the ClientApp" in caplog.text and "unpicklable batch" in caplog.text
    channel.close()


def test_the_listener_leaves_no_socket_file_behind(tmp_path):
    listener = Listener()
    folder = listener.path.rsplit("/", 1)[0]
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(listener.path)
    conn = listener.accept(timeout_s=5.0)
    assert not os.path.exists(folder)
    conn.close()
    client.close()
    unused = Listener()
    unused.close()
    assert not os.path.exists(unused.path.rsplit("/", 1)[0])


def sleepy_app() -> ClientApp:
    """Terminal 0 sleeps ``sleep_s`` seconds (from the message's config) before answering; every
    reply names its terminal, its round and whether the app ran on its process's main thread;
    terminal 3 ends its process in a round with ``kill = 1``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        pid = int(context.node_config["partition-id"])
        if pid == 0:
            time.sleep(float(config["sleep_s"]))
        if pid == 3 and int(config["kill"]):
            os._exit(1)
        main = int(threading.current_thread() is threading.main_thread())
        return Message(RecordDict({"metrics": MetricRecord({"pid": pid, "round": int(config["round"]), "main": main})}), reply_to=msg)

    return app


def send(grid, nodes, server_round: int, *, sleep_s: float = 0.0, kill: int = 0, timeout: float | None = None) -> dict[int, Message]:
    content = RecordDict({"config": ConfigRecord({"round": server_round, "sleep_s": sleep_s, "kill": kill})})
    msgs = [Message(content, dst_node_id=n, message_type="train", group_id=str(server_round)) for n in nodes]
    return {r.metadata.src_node_id: r for r in grid.send_and_receive(msgs, timeout=timeout)}


def test_the_engine_reaches_local_actors_by_channel_with_the_replies_of_ray_calls_on_the_same_thread(ray_session):
    population = Population({"laptop": 4}, builtin_profiles())
    results = {}
    for transport in ("channel", "ray"):
        with RayEngine(sleepy_app(), population, num_actors=2, transport=transport) as engine:
            grid = engine.grid()
            nodes = list(grid.get_node_ids())
            replies = send(grid, nodes, 1)
            results[transport] = {engine.partition_of(n): dict(r.content["metrics"]) for n, r in replies.items()}
            actors = [a for pool in engine.pools.values() for a in pool.actors]
            assert len(engine._channels) == (len(actors) if transport == "channel" else 0)
    # the same replies, and the ClientApp ran on the actor's main thread either way (as Ray runs its calls)
    assert results["channel"] == results["ray"] == {p: {"pid": p, "round": 1, "main": 1} for p in range(4)}


def test_rounds_through_the_object_store_and_through_channels_alternate_on_the_same_actors(ray_session):
    # A round whose global model goes through Ray's object store reaches the actors by Ray calls,
    # which run on the thread that answers the channel: the engine pauses the channel first, and
    # the next round without a shared model goes through the channels again.
    population = Population({"laptop": 4}, builtin_profiles())
    with RayEngine(sleepy_app(), population, num_actors=2, transport="channel") as engine:
        engine.shared_record_bytes = 1  # any ArrayRecord that several batches carry is shared
        grid = engine.grid()
        nodes = list(grid.get_node_ids())
        model = ArrayRecord([np.ones(3, dtype=np.float32)])
        for server_round, shared in enumerate([False, True, False, True], start=1):
            content = RecordDict({"config": ConfigRecord({"round": server_round, "sleep_s": 0.0, "kill": 0})})
            if shared:
                content["arrays"] = model
            msgs = [Message(content, dst_node_id=n, message_type="train", group_id=str(server_round)) for n in nodes]
            replies = grid.send_and_receive(msgs, timeout=60.0)
            assert {engine.partition_of(r.metadata.src_node_id): dict(r.content["metrics"]) for r in replies} == {
                p: {"pid": p, "round": server_round, "main": 1} for p in range(4)
            }, f"round {server_round} (shared model: {shared})"
            assert len(engine._answering) == (0 if shared else 2)  # channels answering only in channel rounds
        assert engine.actor_restarts == 0 and len(engine._channels) == 2


def test_an_actor_that_dies_on_its_channel_loses_only_its_terminal_and_its_successor_gets_a_channel(ray_session):
    population = Population({"laptop": 4}, builtin_profiles())
    with RayEngine(sleepy_app(), population, num_actors=2, transport="channel") as engine:
        grid = engine.grid()
        nodes = list(grid.get_node_ids())
        first = send(grid, nodes, 1, kill=1)
        assert first[engine.node_id_of(3)].error.code == ErrorCode.CLIENT_APP_CRASHED
        assert "actor process died" in first[engine.node_id_of(3)].error.reason
        assert all(not first[engine.node_id_of(p)].has_error() for p in (0, 1, 2))
        assert engine.actor_restarts >= 1
        actors = [a for pool in engine.pools.values() for a in pool.actors]
        assert all(id(a) in engine._channels for a in actors)  # the replacements too
        second = send(grid, nodes, 2)
        assert {engine.partition_of(n): int(r.content["metrics"]["round"]) for n, r in second.items()} == {0: 2, 1: 2, 2: 2, 3: 2}


def test_an_answer_that_comes_after_its_timeout_is_not_taken_for_a_later_rounds(ray_session):
    population = Population({"laptop": 4}, builtin_profiles())
    with RayEngine(sleepy_app(), population, num_actors=2, transport="channel") as engine:
        grid = engine.grid()
        nodes = list(grid.get_node_ids())
        send(grid, nodes, 1)  # channels open, actors warm
        late = send(grid, nodes, 2, sleep_s=1.5, timeout=0.5)  # terminal 0's batch is still running
        assert engine.node_id_of(0) not in late
        third = send(grid, nodes, 3)
        # the round-2 answer of terminal 0's batch arrives during round 3 and is dropped, not
        # handed over as round 3's
        assert {engine.partition_of(n): int(r.content["metrics"]["round"]) for n, r in third.items()} == {0: 3, 1: 3, 2: 3, 3: 3}


def test_channels_that_cannot_listen_leave_the_actors_to_ray_calls(ray_session, tmp_path, monkeypatch, caplog):
    # a Unix socket's path has at most 107 bytes: a temporary folder deeper than that cannot hold one
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    population = Population({"laptop": 4}, builtin_profiles())
    with RayEngine(sleepy_app(), population, num_actors=2, transport="channel") as engine:
        grid = engine.grid()
        with caplog.at_level(logging.WARNING, logger="fedsplit"):
            replies = send(grid, list(grid.get_node_ids()), 1)
        assert {engine.partition_of(n): int(r.content["metrics"]["round"]) for n, r in replies.items()} == {0: 1, 1: 1, 2: 1, 3: 1}
        assert engine._channels == {}
    assert "cannot listen on a Unix socket" in caplog.text
    assert list(deep.iterdir()) == []  # no folder left behind


def test_an_unknown_transport_is_refused():
    population = Population({"laptop": 1}, builtin_profiles())
    with pytest.raises(ValueError, match="engine transport 'grpc': expected one of ray, channel"):
        RayEngine(sleepy_app(), population, transport="grpc")


def test_killed_reason_is_the_engines_for_an_injected_kill_on_a_channel(ray_session):
    population = Population({"laptop": 2}, builtin_profiles())
    with RayEngine(sleepy_app(), population, num_actors=1, transport="channel") as engine:
        engine.faults = lambda msg: "kill" if msg.metadata.dst_node_id == engine.node_id_of(1) else None
        grid = engine.grid()
        replies = send(grid, list(grid.get_node_ids()), 1)
        assert replies[engine.node_id_of(1)].error.reason == KILLED_REASON
        assert not replies[engine.node_id_of(0)].has_error()
        assert all(id(a) in engine._channels for pool in engine.pools.values() for a in pool.actors)


def test_a_replacement_actor_without_a_channel_is_reached_by_ray_calls_in_the_same_round(ray_session):
    """The replacement of a dead actor whose channel does not open (here: never tried) gets its
    batches by Ray calls while the other actors' still come through their channels."""
    population = Population({"laptop": 4}, builtin_profiles())
    with RayEngine(sleepy_app(), population, num_actors=2, transport="channel") as engine:
        grid = engine.grid()
        nodes = list(grid.get_node_ids())
        send(grid, nodes, 1)
        engine._open_channels = lambda actors: None  # replacements get no channel
        second = send(grid, nodes, 2, kill=1)
        assert second[engine.node_id_of(3)].error.code == ErrorCode.CLIENT_APP_CRASHED
        assert {engine.partition_of(n): int(r.content["metrics"]["round"]) for n, r in second.items() if not r.has_error()} == {0: 2, 1: 2, 2: 2}
        actors = [a for pool in engine.pools.values() for a in pool.actors]
        assert sum(id(a) in engine._channels for a in actors) < len(actors)
        third = send(grid, nodes, 3)  # a round with an actor lacking a channel: Ray calls for all
        assert {engine.partition_of(n): int(r.content["metrics"]["round"]) for n, r in third.items()} == {0: 3, 1: 3, 2: 3, 3: 3}


def test_the_config_chooses_the_transport():
    from fedsplit.config import ConfigError, load_config

    for value in ("channel", "ray"):
        cfg = load_config(None, [f"engine.transport={value}", "devices={laptop=2}"])
        assert RayEngine.from_run_config(cfg, sleepy_app()).transport == value
    with pytest.raises(ConfigError, match=r"engine.transport = 'grpc': unknown \(allowed: ray, channel\)"):
        load_config(None, ["engine.transport=grpc"])


def timed_app() -> ClientApp:
    """Every terminal but 3 works ``sleep_s`` seconds, then replies with its process id and the
    wall clock time (seconds) at which it ended; terminal 3 ends its process in a round with
    ``kill = 1`` (else replies at once: the lightest, it is last in its batch from round 2 on)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        if int(context.node_config["partition-id"]) == 3:
            if int(config["kill"]):
                os._exit(1)
        else:
            time.sleep(float(config["sleep_s"]))
        return Message(RecordDict({"metrics": MetricRecord({"os_pid": os.getpid(), "ended_at": time.time()})}), reply_to=msg)

    return app


def test_a_channel_batch_answers_in_parts_that_reach_the_caller_while_the_actor_works_on(ray_session):
    population = Population({"laptop": 4}, builtin_profiles())
    with RayEngine(timed_app(), population, num_actors=1, transport="channel") as engine:
        grid = engine.grid()
        nodes = list(grid.get_node_ids())
        parts: list[tuple[int, float]] = []
        content = RecordDict({"config": ConfigRecord({"sleep_s": 0.3, "kill": 0})})
        msgs = [Message(content, dst_node_id=n, message_type="train", group_id="1") for n in nodes]
        replies = grid.send_and_receive(msgs, on_replies=lambda got: parts.append((len(got), time.time())))
        assert len(engine._channels) == 1
        assert [size for size, _ in parts] == answer_chunks(4) == [2, 1, 1]
        ended = sorted(float(r.content["metrics"]["ended_at"]) for r in replies)
        # the first two replies were in the caller's hands while the actor still worked on the third and fourth
        assert parts[0][1] < ended[2] - 0.1


def test_a_channel_batch_keeps_the_replies_sent_before_its_actor_died(ray_session):
    population = Population({"laptop": 4}, builtin_profiles())
    with RayEngine(timed_app(), population, num_actors=1, transport="channel") as engine:
        grid = engine.grid()
        nodes = list(grid.get_node_ids())

        def round_(kill: int) -> dict[int, Message]:
            content = RecordDict({"config": ConfigRecord({"sleep_s": 0.05, "kill": kill})})
            msgs = [Message(content, dst_node_id=n, message_type="train", group_id=str(kill)) for n in nodes]
            return {engine.partition_of(r.metadata.src_node_id): r for r in grid.send_and_receive(msgs, timeout=60.0)}

        first_pid = {int(r.content["metrics"]["os_pid"]) for r in round_(0).values()}
        assert len(first_pid) == 1
        killed = round_(1)
        # one actor, one batch, terminal 3 last (the lightest in round 1): answered as [a, b], [c], [3]
        assert len(engine.last_batches) == 1 and engine.last_batches[0][-1] == 3
        assert killed[3].error.code == ErrorCode.CLIENT_APP_CRASHED
        # terminals 0-2 answered before terminal 3 ended the process: their replies stand, not re-run
        assert {p: int(killed[p].content["metrics"]["os_pid"]) for p in (0, 1, 2)} == dict.fromkeys((0, 1, 2), first_pid.pop())
        assert engine.actor_restarts >= 1


def test_driver_work_for_the_first_exchange_runs_while_new_actors_start_before_any_batch_is_sent(ray_session):
    # The channels open at the first exchange and wait for the actors to start (seconds for new
    # processes): the driver's work given to run_while_training runs in that wait, so every
    # terminal's work starts after it (through Ray calls it would run after the dispatch).
    population = Population({"laptop": 3}, builtin_profiles())
    done_at: list[float] = []
    with RayEngine(timed_app(), population, num_actors=1, transport="channel") as engine:
        grid = engine.grid()
        engine.run_while_training(lambda: (time.sleep(0.3), done_at.append(time.time())))  # after the dispatch, the terminals would end first
        content = RecordDict({"config": ConfigRecord({"sleep_s": 0.0, "kill": 0})})
        replies = grid.send_and_receive([Message(content, dst_node_id=n, message_type="train", group_id="1") for n in grid.get_node_ids()])
        assert len(engine._channels) == 1
    assert len(done_at) == 1  # once
    assert all(float(r.content["metrics"]["ended_at"]) > done_at[0] for r in replies)
