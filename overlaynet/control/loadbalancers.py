"""The service controller for LoadBalancer Services (a cloud-controller-manager's, or MetalLB's
controller): it runs on every sync, gives each ``type: LoadBalancer`` Service without an address
one from the Cluster's ``loadBalancerPool``, writes it into the Service's
``status.loadBalancer.ingress`` and records why a Service stays ``<pending>``.

What this module owns: the store side of the allocation (the Services' status, and the meta key
``PENDING`` holding ``namespace/name -> reason``); the choice itself is
``api.loadbalancer.allocate_load_balancers`` (pure). An address is released when its Service is
deleted or stops being a LoadBalancer: the next run hands it out again, first to a ``<pending>``
Service. What it never does: announce addresses (``node/speaker.py``) or touch the kernel.
"""

from __future__ import annotations

import json

from overlaynet.api.loadbalancer import allocate_load_balancers
from overlaynet.api.model import ClusterSpec, address_pool
from overlaynet.api.services import Service
from overlaynet.control.store import Store

PENDING = "lb-pending"  # store meta key: {"namespace/name": "reason"}


def reconcile_load_balancers(store: Store, spec: ClusterSpec, services: list[Service]) -> list[Service]:
    """Allocate and release load-balancer addresses; return the services as stored after it."""
    if not any(s.type == "LoadBalancer" or s.ingress_ip for s in services) and not pending_reasons(store, spec.name):
        return services
    allocation = allocate_load_balancers(services, address_pool(spec))
    with store.transaction():
        for before, after in zip(services, allocation.services):
            if after != before:
                store.put(spec.name, after.to_document())
        store.set_meta(spec.name, PENDING, json.dumps(dict(allocation.pending), sort_keys=True))
    return list(allocation.services)


def pending_reasons(store: Store, cluster: str) -> dict[str, str]:
    """``namespace/name`` -> why that LoadBalancer Service has no address (MetalLB's AllocationFailed)."""
    return json.loads(store.get_meta(cluster, PENDING, "{}"))
