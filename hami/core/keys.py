"""Every annotation, label, resource and env key of the HAMi wire protocol, in one place.

Values are HAMi v2.8.0's (spec: hami-scheduler-spec.md §4.3, hami-node-spec.md §0.1).
"""

from __future__ import annotations

from typing import Final

# Node annotations
NODE_NVIDIA_REGISTER: Final = "hami.io/node-nvidia-register"
NODE_NVIDIA_SCORE: Final = "hami.io/node-nvidia-score"
NODE_HANDSHAKE: Final = "hami.io/node-handshake"
NODE_LOCK: Final = "hami.io/mutex.lock"

# Pod annotations written by the scheduler / device plugin
VGPU_NODE: Final = "hami.io/vgpu-node"  # annotation and label
VGPU_TIME: Final = "hami.io/vgpu-time"
VGPU_DEVICES_TO_ALLOCATE: Final = "hami.io/vgpu-devices-to-allocate"
VGPU_DEVICES_ALLOCATED: Final = "hami.io/vgpu-devices-allocated"
BIND_PHASE: Final = "hami.io/bind-phase"
BIND_TIME: Final = "hami.io/bind-time"

# hami-py (issue 5): the Lease term (leaseTransitions) of the leader that wrote the pod's decision
# (filter patch) or binding; a write of a deposed leader is recognisable by it, and a leader does
# not bind a decision of another term.
SCHEDULER_TERM: Final = "hami.io/scheduler-term"

BIND_PHASE_ALLOCATING: Final = "allocating"
BIND_PHASE_SUCCESS: Final = "success"
BIND_PHASE_FAILED: Final = "failed"

# Pod annotations written by users
GPU_SCHEDULER_POLICY: Final = "hami.io/gpu-scheduler-policy"
NODE_SCHEDULER_POLICY: Final = "hami.io/node-scheduler-policy"
USE_GPUTYPE: Final = "nvidia.com/use-gputype"
NOUSE_GPUTYPE: Final = "nvidia.com/nouse-gputype"
USE_GPUUUID: Final = "nvidia.com/use-gpuuuid"
NOUSE_GPUUUID: Final = "nvidia.com/nouse-gpuuuid"
NUMA_BIND: Final = "nvidia.com/numa-bind"
VGPU_MODE: Final = "nvidia.com/vgpu-mode"

# Label (pod or namespace) that excludes an object from the webhook
WEBHOOK_IGNORE: Final = "hami.io/webhook"
WEBHOOK_IGNORE_VALUE: Final = "ignore"

# Default NVIDIA resource names (overridable by device config, spec §4.2)
RESOURCE_GPU: Final = "nvidia.com/gpu"
RESOURCE_GPUMEM: Final = "nvidia.com/gpumem"
RESOURCE_GPUMEM_PERCENTAGE: Final = "nvidia.com/gpumem-percentage"
RESOURCE_GPUCORES: Final = "nvidia.com/gpucores"
RESOURCE_PRIORITY: Final = "nvidia.com/priority"

DEFAULT_SCHEDULER_NAME: Final = "hami-scheduler"
