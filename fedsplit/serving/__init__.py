"""Serving a schedule (plain PyTorch, no Flower): the models the scheduler chose, loaded from their
run folders and run on held-out data (:mod:`~fedsplit.serving.serve_sim`), and its command
``fedsplit serve-sim`` (:mod:`~fedsplit.serving.cli`).

It sits above both the trained members (:mod:`fedsplit.report.members`) and the scheduler
(:mod:`fedsplit.inference`), so neither of those imports the other through it.
"""
