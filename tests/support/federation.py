"""Tokens another issuer gives a workload, as Entra ID's workload identity federation takes them:
a Kubernetes cluster's projected service-account tokens (audience api://AzureADTokenExchange)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import jwt

from tests.support.certs import client_cert
from tests.support.entra import EXCHANGE_AUDIENCE, FederatedTrust

KUBE_ISSUER = "https://oidc.prod-aks.azure.com/tenant/cluster/"
SUBJECT = "system:serviceaccount:apps:crm"
_KEY = client_cert(key_index=2).key


def cluster_trust() -> FederatedTrust:
    """The federated identity credential an app registration has for the cluster's tokens."""
    return FederatedTrust(KUBE_ISSUER, SUBJECT, _KEY.public_key())  # type: ignore[arg-type]


def service_account_token(now: datetime, subject: str = SUBJECT) -> str:
    """A projected service-account token as kubelet writes it for the webhook."""
    claims = {
        "iss": KUBE_ISSUER,
        "sub": subject,
        "aud": [EXCHANGE_AUDIENCE],
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(hours=1)).timestamp()),
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, _KEY, algorithm="RS256", headers={"kid": "cluster-key"})
