"""Flower mod that turns a seeded fraction of the terminals into Byzantine attackers (``attack.*``).

An attacker trains honestly; on the way out the mod replaces the reply's ``"arrays"`` by what
:func:`fedsplit.privacy.attacks.poison_update` makes of them (``signflip``, ``scale``, ``noise``;
``labelflip`` changes the training labels instead, see :func:`fedsplit.clients.privacy_mod.local_trainer`).
Which terminals attack is :func:`fedsplit.privacy.attacks.attacker_ids` of the run's seed, the
same in every process; honest terminals, evaluate messages and split learning's ``train.split``
messages pass through untouched. The reply says nothing about the attack: the server sees only
the poisoned weights.

Install it inside the compression mod (the attack rewrites the dense weights; the compression mod
then encodes them like any other update) and outside the privacy mod (an attacker does not clip
what it sends): :func:`fedsplit.clients.app.default_mods` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable

from fedsplit.clients.arrays import array_record_from_state, record_views
from fedsplit.clients.privacy_mod import _attackers, run_config
from fedsplit.privacy.attacks import UPDATE_ATTACKS, poison_update
from fedsplit.records import record_key, section, to_numpy

log = logging.getLogger("fedsplit")


def make_attack_mod(config_json: str | None = None) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """A Flower mod emulating the run's ``attack.*`` on the attacking terminals.

    Parameters
    ----------
    config_json : str, optional
        The run's resolved configuration (as :func:`fedsplit.clients.app.make_client_app` got it);
        without it, the run config's ``config-file``/``overrides``.
    """

    def attack_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
            return call_next(msg, ctx)
        cfg = run_config(ctx, config_json)
        a = cfg.attack
        pid = int(ctx.node_config["partition-id"])
        if a.kind not in UPDATE_ATTACKS or pid not in _attackers(cfg.num_terminals, a.fraction, cfg.seed):
            return call_next(msg, ctx)
        sent_key = record_key(section(msg.content, ArrayRecord), "arrays")
        if sent_key is None:
            return call_next(msg, ctx)
        received = record_views(msg.content[sent_key])  # read-only views of what the server sent
        reply = call_next(msg, ctx)
        if reply.has_error():
            return reply
        reply_key = record_key(section(reply.content, ArrayRecord), "arrays")
        if reply_key is None:
            return reply
        config = msg.content.config_records.get("config", ConfigRecord())
        server_round = int(config.get("server-round", 0))
        rng = np.random.default_rng([cfg.seed % 2**32, pid, server_round, 0xA77])
        local = to_numpy(reply.content[reply_key])
        poisoned = poison_update(received, local, a.kind, k=a.k, noise_std=a.noise_std, rng=rng)
        reply.content[reply_key] = array_record_from_state(poisoned)
        log.debug("attack: terminal %d sends a %s update in round %d", pid, a.kind, server_round)
        return reply

    return attack_mod
