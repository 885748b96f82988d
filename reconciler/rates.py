"""RunPod's storage rates, which the controller's cost estimate (``loop``) and the simulator share.

USD per GB-month of 730 hours [reference/runpod-api.md, section 6]: the volume disk bills while the pod runs
and, at twice the rate, while it is stopped; the container disk bills only while it runs. Billed per second.
Kept apart from ``loop`` so the simulator can use them without importing the daemon (and the RunPod SDK).
"""

VOLUME_RUNNING_RATE = 0.10
VOLUME_STOPPED_RATE = 0.20
CONTAINER_DISK_RATE = 0.10
HOURS_PER_MONTH = 730.0
