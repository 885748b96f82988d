"""The emulator's domain exceptions: a pod operation RunPod would refuse, carrying RunPod's words.

Raised by the fleet (and ``spec`` while parsing input); each API maps them to its own answer: GraphQL to
``200 + errors`` (code ``RUNPOD``), REST to a problem document whose status depends on the class.

    FleetError
    ├── CapacityError            REST 400: no room for the pod, RunPod's capacity sentence in the detail
    │   ├── NoInstancesAvailable create: no machine of that GPU type has enough free GPUs
    │   ├── NotEnoughFreeGpus    resume/start: the pod's own machine is full
    │   └── NoCompatibleCudaHost create: no free machine meets the CUDA constraints
    ├── PodNotFound              REST 404: unknown or terminated pod id
    └── InvalidRequest           REST 400: input RunPod would refuse (no image, bad ports, gpuCount < 1)
"""

from __future__ import annotations

from runpod_emulator.messages import NO_CUDA_HOST, NO_INSTANCES, NOT_ENOUGH_FREE_GPUS, POD_NOT_FOUND


class FleetError(Exception):
    """A pod operation RunPod would refuse; ``str(e)`` is the message RunPod sends."""


class CapacityError(FleetError):
    pass


class NoInstancesAvailable(CapacityError):
    def __init__(self) -> None:
        super().__init__(NO_INSTANCES)


class NotEnoughFreeGpus(CapacityError):
    def __init__(self) -> None:
        super().__init__(NOT_ENOUGH_FREE_GPUS)


class NoCompatibleCudaHost(CapacityError):
    def __init__(self) -> None:
        super().__init__(NO_CUDA_HOST)


class PodNotFound(FleetError):
    def __init__(self, pod_id: str) -> None:
        super().__init__(POD_NOT_FOUND.format(pod_id=pod_id))


class InvalidRequest(FleetError):
    pass
