"""The `kubernetes:` block of the config: how tokend reaches the Kubernetes API server.

Without the block tokend runs in-cluster: the pod's service-account token (re-read when the API
server refuses it, so a rotated token is picked up), the CA bundle mounted beside it and
`KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`. Outside a cluster: `kubeconfig:` (and
`context:`, default its current context).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tokend.durations import PositiveDuration
from tokend.paths import ConfigPath

FIELD_MANAGER = "tokend"
"""Server-side apply's field manager: the Secret's fields and the Lease that are tokend's."""

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _object_name(name: str) -> str:
    if not _DNS_SUBDOMAIN.fullmatch(name) or len(name) > 253:
        raise ValueError(f"'{name}' is not a Kubernetes name (lowercase letters, digits, '-', '.')")
    return name


def _namespace(name: str) -> str:
    if not _DNS_LABEL.fullmatch(name) or len(name) > 63:
        raise ValueError(f"'{name}' is not a namespace name (lowercase letters, digits, '-')")
    return name


ObjectName = Annotated[str, AfterValidator(_object_name)]
"""The name of a Secret or a Lease (a DNS subdomain)."""
Namespace = Annotated[str, AfterValidator(_namespace)]


class KubernetesOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kubeconfig: ConfigPath | None = None
    """A kubeconfig file; None: in-cluster."""
    context: str | None = Field(default=None, min_length=1)
    """The kubeconfig context to use (default: its current-context)."""
    service_account_dir: ConfigPath = SERVICE_ACCOUNT_DIR
    """In-cluster: where the kubelet mounts `token`, `ca.crt` and `namespace`."""
    timeout: PositiveDuration = timedelta(seconds=10)
    """For each request to the API server (connecting, and waiting for the answer)."""

    @model_validator(mode="after")
    def _context_needs_kubeconfig(self) -> KubernetesOptions:
        if self.context is not None and self.kubeconfig is None:
            raise ValueError("context applies only with kubeconfig")
        return self

    @property
    def in_cluster(self) -> bool:
        return self.kubeconfig is None
