"""What every Kubernetes object document shares, for the parsers of each kind (pure).

This module owns the two rules every kind's parser (``manifests`` for Pods and Deployments,
``services`` for Services and EndpointSlices) applies the same way:
- ``Where``: the object being validated, the prefix of every error about it
  (``web.yaml: Pod "web-1": spec.containers[0].name is required``);
- ``metadata.namespace``: the namespace written in the object, or the one given by ``-n``,
  or ``default``; the two must agree, and the result is a DNS-1123 label.

It never parses a kind's own fields.
"""

from __future__ import annotations

from collections.abc import Callable

from overlaynet import names
from overlaynet.errors import InvalidInput

DEFAULT_NAMESPACE = "default"


class Where:
    """The object being validated, for error messages: ``web.yaml: Pod "web-1": <field> ...``."""

    def __init__(self, source: str, kind: str, name: str) -> None:
        if name:
            self.prefix = f'{source}: {kind} "{name}"' if source else f'{kind} "{name}"'
        else:
            self.prefix = f"{source}: {kind}"

    def error(self, message: str) -> InvalidInput:
        return InvalidInput(f"{self.prefix}: {message}")

    def check(self, check: Callable[[], object]) -> None:
        """Run a ``names.check_*`` and re-word its error for this object."""
        try:
            check()
        except InvalidInput as exc:
            raise self.error(str(exc).split(": ", 1)[-1]) from None


def object_namespace(metadata: dict, where: Where, namespace: str | None) -> str:
    """The object's namespace: ``metadata.namespace``, else ``namespace`` (``-n``), else ``default``."""
    written = metadata.get("namespace")
    if written is not None and namespace is not None and written != namespace:
        raise where.error(f'metadata.namespace "{written}" does not match the namespace "{namespace}" given by -n')
    resolved = written or namespace or DEFAULT_NAMESPACE
    where.check(lambda: names.check_label("namespace", resolved, "metadata.namespace"))
    return resolved
