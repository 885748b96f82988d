"""Harper's pod controller: leases voice GPU pods on RunPod, keeps a stopped warm standby, reconciles.

Flow: ``api`` (leases, admin) and the ``loop`` (APScheduler passes) share a ``store`` (SQLite). A pass
lists RunPod through the ``provider`` and probes pods, ``planning.plan`` decides, ``actuator`` acts.
"""

__version__ = "0.1.0"
