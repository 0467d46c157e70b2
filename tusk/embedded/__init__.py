"""Embedded mode: ``tusk up`` runs PostgreSQL, NATS and the services under ``$TUSK_HOME``.

Public surface: ``up``, ``down``, ``status`` (called by the CLI), ``ClusterStatus`` and
``ComponentStatus`` (what status returns), ``SERVICES`` and ``ServiceSpec`` (the service
table). ``python -m tusk.embedded.supervisor`` is the background supervisor.
"""

from tusk.embedded.components import SERVICES, ServiceSpec
from tusk.embedded.control import ClusterStatus, down, status, up
from tusk.embedded.layout import ComponentStatus

__all__ = ["SERVICES", "ClusterStatus", "ComponentStatus", "ServiceSpec", "down", "status", "up"]
