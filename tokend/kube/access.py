"""Asking the API server what tokend may do (SelfSubjectAccessReview), for `tokend check`.

Any authenticated identity may ask about itself; no Role entry is needed. RBAC gives no reason
for a denial, so the line names the missing rule from what was asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokend.kube.errors import Attempt, KubeError, classify

if TYPE_CHECKING:
    from tokend.kube.client import KubeClient


@dataclass(frozen=True, slots=True)
class Rule:
    """One thing tokend needs to be allowed: `verb` on `resource` (`name`) in `namespace`."""

    verb: str
    resource: str
    namespace: str
    name: str | None = None
    group: str = ""


def refusals(client: KubeClient, rules: list[Rule], *, where: str) -> list[str]:
    """One line per rule the API server says tokend lacks (or one line saying why it could not
    be asked). Blocking."""
    lines = []
    for rule in rules:
        attempt = Attempt(
            who=client.who,
            verb=rule.verb,
            resource=rule.resource,
            name=rule.name,
            namespace=rule.namespace,
            where=where,
        )
        try:
            allowed = _allowed(client, rule)
        except KubeError as exc:
            return [str(exc)]
        except Exception as exc:
            return [str(classify(exc, attempt))]
        if not allowed:
            lines.append(f"{where}: {attempt.refused()} (add it to the Role bound to it)")
    return lines


def _allowed(client: KubeClient, rule: Rule) -> bool:
    from lightkube.models.authorization_v1 import (
        ResourceAttributes,
        SelfSubjectAccessReviewSpec,
    )
    from lightkube.resources.authorization_v1 import SelfSubjectAccessReview

    attributes = ResourceAttributes(
        verb=rule.verb,
        resource=rule.resource,
        group=rule.group,
        namespace=rule.namespace,
        name=rule.name,
    )
    review = SelfSubjectAccessReview(
        spec=SelfSubjectAccessReviewSpec(resourceAttributes=attributes)
    )
    answer = client.sync_client().create(review)
    return bool(answer.status and answer.status.allowed)


def reachable(client: KubeClient) -> str | None:
    """Why the API server cannot be used with these credentials, or None (`tokend check`)."""
    try:
        namespace = client.namespace
        _allowed(client, Rule("get", "secrets", namespace))
    except KubeError as exc:
        return str(exc)
    except Exception as exc:
        where = "kubernetes API server"
        attempt = Attempt(client.who, "create", "selfsubjectaccessreviews", None, None, where)
        return str(classify(exc, attempt))
    return None
