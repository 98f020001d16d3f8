"""Split learning core (plain PyTorch): cutting models, per-step exchange maths, costs, cut choice.

- :mod:`~fedsplit.split.parts`: :func:`split_model` cuts a model (see
  :mod:`fedsplit.models.contract`) into deep-copied parts whose state dicts use the model's keys.
- :mod:`~fedsplit.split.steps`: one function per message a side handles (vanilla and U-shape),
  with the forward graph kept in a :class:`ForwardState` or recomputed.
- :mod:`~fedsplit.split.optim`: SGD per part and its momentum state as named tensors.
- :mod:`~fedsplit.split.profile`: exact per-part FLOPs, parameters and bytes across each cut.
- :mod:`~fedsplit.split.cut_select`: predicted time per epoch and the cut that minimises it
  (among the cuts that keep a layer with parameters, and so the raw samples, on the terminal,
  and leave the server a part with parameters and FLOPs).
"""

from fedsplit.models.contract import blocks, cut_points, resolve_cut, trainable_names
from fedsplit.split.cut_select import (
    PROTOCOLS,
    BatchTime,
    candidate_cuts,
    choose_cut,
    describe_cut_choice,
    local_cuts,
    predict_batch_time,
    predict_epoch_time,
    server_cuts,
)
from fedsplit.split.optim import load_sgd_state, make_sgd, sgd_state
from fedsplit.split.parts import (
    ChainPart,
    SplitParts,
    UShapeParts,
    assemble_state_dict,
    has_trainable,
    load_part_state_dict,
    parse_cut,
    part_state_dict,
    split_model,
)
from fedsplit.split.profile import (
    BlockProfile,
    CutProfile,
    PartProfile,
    SplitProfile,
    profile_blocks,
    profile_split,
)
from fedsplit.split.steps import (
    ForwardState,
    LossStepResult,
    SplitStepResult,
    client_backward_from_state,
    client_backward_recompute,
    client_forward,
    client_head_step,
    loss_step,
    part_backward,
    part_forward,
    payload_bytes,
    server_backward_from_state,
    server_backward_recompute,
    server_forward,
    server_step,
    split_training_step,
    to_numpy,
)

__all__ = [
    "PROTOCOLS",
    "BatchTime",
    "BlockProfile",
    "ChainPart",
    "CutProfile",
    "ForwardState",
    "LossStepResult",
    "PartProfile",
    "SplitParts",
    "SplitProfile",
    "SplitStepResult",
    "UShapeParts",
    "assemble_state_dict",
    "blocks",
    "candidate_cuts",
    "choose_cut",
    "client_backward_from_state",
    "client_backward_recompute",
    "client_forward",
    "client_head_step",
    "cut_points",
    "describe_cut_choice",
    "has_trainable",
    "load_part_state_dict",
    "load_sgd_state",
    "local_cuts",
    "loss_step",
    "make_sgd",
    "part_backward",
    "part_forward",
    "parse_cut",
    "part_state_dict",
    "payload_bytes",
    "predict_batch_time",
    "predict_epoch_time",
    "profile_blocks",
    "profile_split",
    "resolve_cut",
    "server_backward_from_state",
    "server_backward_recompute",
    "server_cuts",
    "server_forward",
    "server_step",
    "sgd_state",
    "split_model",
    "split_training_step",
    "to_numpy",
    "trainable_names",
]
