"""Cost simulator: the controller's own ``plan()`` on simulated time against a model of RunPod.

    model   RunPod as far as cost and waiting go (boot times, capacity failures, prices, storage), workloads
    world   the controller's records and the actuator's effects on them; the books
    engine  when passes run (as the daemon's scheduler runs them) and the event loop
    report  cost per 30-day month by kind, GPU-hours, waits by path; text
    sweep   many policies on the same sessions: table, frontier, recommendation, PNG
    cli     ``python -m reconciler simulate``
"""
