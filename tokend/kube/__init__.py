"""Kubernetes: the `kubernetes:` config block and the API client every Kubernetes user in a
process shares (the Secret sink in `tokend.sinks.kubernetes`, the leader election in
`tokend.kube.election`).

The client is a shared resource (`tokend.resources`) registered here as `KUBERNETES`. The block
is optional: without it tokend runs in-cluster with the pod's service account. Nothing here
imports lightkube at module level.
"""

from __future__ import annotations

from tokend.kube.access import reachable
from tokend.kube.client import FIELD_MANAGER, KubeClient
from tokend.kube.errors import KubeError
from tokend.kube.options import KubernetesOptions
from tokend.resources import RESOURCES, Environment, ResourceKind


def _client(options: KubernetesOptions, environment: Environment) -> KubeClient:
    return KubeClient(options)


def _check(client: KubeClient) -> list[str]:
    """`tokend check`: can tokend reach the API server and authenticate?"""
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
