"""`KubeClient`: the Kubernetes API client of a process, shared by every Kubernetes Secret sink
and the leader election (the `kubernetes` shared resource).

It wraps lightkube (async, on httpx2), imported only when a request is first made: `tokend
version` and configs without Kubernetes never load it. The daemon uses lightkube's async client;
`tokend check`, which has no event loop, its synchronous one. Both follow tokend's rules for
outgoing connections: the server's certificate is verified (TLS 1.2 or newer; a kubeconfig's
`insecure-skip-tls-verify` is refused), no redirect is followed, no proxy from the environment is
used. The service-account token is read from its file, and read again whenever the API server
answers 401 (lightkube's token-file auth), so a token the kubelet has rotated is picked up.
"""

from __future__ import annotations

import os
from typing import Any

from tokend.kube.errors import KubeError
from tokend.kube.options import FIELD_MANAGER, KubernetesOptions
from tokend.transport import url_problem


class KubeClient:
    def __init__(self, options: KubernetesOptions) -> None:
        self.options = options
        self.who = (
            "tokend's service account"
            if options.in_cluster
            else f"tokend's kubeconfig user ({options.kubeconfig})"
        )
        self._config: Any = None
        self._async: Any = None
        self._sync: Any = None

    def __repr__(self) -> str:
        where = "in-cluster" if self.options.in_cluster else str(self.options.kubeconfig)
        return f"KubeClient({where})"

    @property
    def namespace(self) -> str:
        """The default namespace: the service account's, or the kubeconfig context's."""
        return str(self.config().namespace)

    @property
    def server(self) -> str:
        return str(self.config().cluster.server)

    def config(self) -> Any:
        """lightkube's `SingleConfig`, read once it can be. Raises `KubeError`."""
        if self._config is None:
            self._config = _load_config(self.options)
        return self._config

    def async_client(self) -> Any:
        """lightkube's `AsyncClient` (for the daemon's event loop). Raises `KubeError`."""
        if self._async is None:
            from lightkube import AsyncClient

            self._async = AsyncClient(self.config(), **self._settings())
        return self._async

    def sync_client(self) -> Any:
        """lightkube's blocking `Client` (for `tokend check`). Raises `KubeError`."""
        if self._sync is None:
            from lightkube import Client

            self._sync = Client(self.config(), **self._settings())
        return self._sync

    def _settings(self) -> dict[str, Any]:
        import httpx2  # loaded with lightkube, never by the config alone

        return {
            "field_manager": FIELD_MANAGER,
            "trust_env": False,  # no proxy from the environment, never ~/.kube/config
            "timeout": httpx2.Timeout(self.options.timeout.total_seconds()),
        }

    async def close(self) -> None:
        client, self._async = self._async, None
        if client is not None:
            await client.close()
        self.close_sync()

    def close_sync(self) -> None:
        client, self._sync = self._sync, None
        if client is not None:
            client.close()


def _load_config(options: KubernetesOptions) -> Any:
    from lightkube import ConfigError, KubeConfig

    try:
        if options.kubeconfig is None:
            config = _in_cluster(options, KubeConfig)
        else:
            config = KubeConfig.from_file(options.kubeconfig).get(context_name=options.context)
    except ConfigError as exc:
        raise KubeError(f"kubernetes: {exc}", code="kube_config") from None
    except (OSError, ValueError) as exc:
        raise KubeError(
            f"kubernetes: cannot read {options.kubeconfig}: {type(exc).__name__}",
            code="kube_config",
        ) from None
    if problem := _config_problem(config):
        raise KubeError(f"kubernetes: {problem}", code="kube_config")
    return config


def _in_cluster(options: KubernetesOptions, kube_config: Any) -> Any:
    if not os.environ.get("KUBERNETES_SERVICE_HOST") or not os.environ.get(
        "KUBERNETES_SERVICE_PORT"
    ):
        raise KubeError(
            "kubernetes: not in a Kubernetes pod (KUBERNETES_SERVICE_HOST/PORT are not set): "
            "give kubernetes.kubeconfig to run outside a cluster",
            code="kube_config",
        )
    return kube_config.from_service_account(options.service_account_dir).get()


def _config_problem(config: Any) -> str | None:
    """What makes a kubeconfig context unusable for tokend, or None."""
    where = f"context {config.context_name}"
    if config.user is None:
        return f"{where} names no user"
    if config.cluster.insecure:
        return (
            f"{where}: insecure-skip-tls-verify is not allowed; give the cluster's "
            "certificate-authority"
        )
    return url_problem(str(config.cluster.server), allow_insecure_http=False)
