"""Kubernetes: the `kubernetes:` config block and the API client every Kubernetes user in a
process shares (the Secret sink in `tokend.sinks.kubernetes`, the leader election in
`tokend.kube.election`).

The client is a shared resource (`tokend.resources`) registered here as `KUBERNETES`. The block
is optional: without it tokend runs in-cluster with the pod's service account. Nothing here
imports lightkube or httpx2 at module level: a config that has a Kubernetes sink loads them only
when the sink is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokend import lazy
from tokend.kube.errors import KubeError
from tokend.kube.options import FIELD_MANAGER, KubernetesOptions
from tokend.resources import RESOURCES, Environment, ResourceKind

if TYPE_CHECKING:
    from tokend.kube.client import KubeClient

__getattr__ = lazy.exports(__name__, {"tokend.kube.client": ("KubeClient",)})


def _client(options: KubernetesOptions, environment: Environment) -> KubeClient:
    from tokend.kube.client import KubeClient  # httpx2 only once it is used

    return KubeClient(options)


def _check(client: KubeClient) -> list[str]:
    """`tokend check`: can tokend reach the API server and authenticate?"""
    from tokend.kube.access import reachable

    problem = reachable(client)
    return [f"api: {problem}"] if problem else []


KUBERNETES: ResourceKind[KubernetesOptions, KubeClient] = RESOURCES.register(
    "kubernetes",
    ResourceKind(
        section="kubernetes",
        options=KubernetesOptions,
        create=_client,
        summary="kubeconfig, context; none: in-cluster",
        default=KubernetesOptions,
        check=_check,
    ),
)

__all__ = ["FIELD_MANAGER", "KUBERNETES", "KubeClient", "KubeError", "KubernetesOptions"]
