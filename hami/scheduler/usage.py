"""The scrape-time view of HAMi 2.8's scheduler metrics (hami-scheduler-spec.md §10).

Built from the ledger's current snapshot (assumed and committed usage), the watched pods and the
quota book; never from a filter's tentative state, so HAMi's quirk of tentative allocations
leaking into ``nodeGPUOverview`` (§14 item 10) does not exist here.
"""

from __future__ import annotations

from hami.core.model import MODE_MIG
from hami.metrics.scheduler import (
    ContainerAllocationRow,
    DeviceUsageRow,
    MigInstanceRow,
    QuotaRow,
    SchedulerUsage,
)
from hami.scheduler.state import SchedulerState


def scheduler_usage(state: SchedulerState) -> SchedulerUsage:
    snapshot = state.ledger.snapshot()
    devices: list[DeviceUsageRow] = []
    for name in sorted(snapshot.nodes):
        node = snapshot.nodes[name]
        for d in node.devices:
            mig: tuple[MigInstanceRow, ...] = ()
            if d.mode == MODE_MIG:
                mig = tuple(
                    MigInstanceRow(template=inst.name, position=pos, in_use=inst.in_use)
                    for pos, inst in enumerate(d.mig.instances)
                )
            devices.append(
                DeviceUsageRow(
                    node=name,
                    uuid=d.id,
                    index=d.index,
                    type=d.type,
                    memory_mib=d.totalmem,
                    cores=d.totalcore,
                    used_memory_mib=d.usedmem,
                    used_cores=d.usedcores,
                    shared=d.used,
                    mode=d.mode,
                    mig_instances=mig,
                    vendor=d.vendor,
                )
            )
    containers: list[ContainerAllocationRow] = []
    for info in state.infos():
        if info.terminal or not info.placed or not info.devices or state.ledger.pod(info.uid) is None:
            continue
        for psd in info.devices.values():
            # HAMi 2.8 decodes with empty container segments dropped: its index is the collapsed one.
            collapsed = [c for c in psd if c]
            for index, container in enumerate(collapsed):
                for cd in container:
                    containers.append(
                        ContainerAllocationRow(
                            namespace=info.namespace,
                            node=info.vgpu_node or "",
                            pod=info.name,
                            container_index=index,
                            uuid=cd.uuid,
                            memory_mib=cd.usedmem,
                            cores=cd.usedcores,
                        )
                    )
    quotas = tuple(
        QuotaRow(namespace=r.namespace, resource=r.resource, used=r.used, limit=r.limit)
        for r in state.quotas.rows()
    )
    return SchedulerUsage(devices=tuple(devices), containers=tuple(containers), quotas=quotas)
