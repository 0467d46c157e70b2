"""Which port each component of a ``tusk up`` cluster listens on.

Strongest first:

1. a port asked for with ``tusk up --port NAME=PORT``: that port, and it must be free
   (the user named it, so another one would surprise them);
2. ``--port NAME=0`` or ``--any-ports``: any free port — the one this home's last run
   used if it is still free and is nobody's default, else one the OS picks. The defaults
   stay free for a cluster that wants them (test clusters, CI jobs side by side);
3. otherwise the port this home's last run used, if still free (a cluster keeps its
   addresses across ``tusk down``/``tusk up``), else the component's default (7640…7656)
   if free, else one the OS picks.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.platform.errors import FailedPrecondition, InvalidArgument
from tusk.embedded.components import pick_port, port_is_free

# ``--port NAME=0``: any free port.
ANY_PORT = 0


def parse_port_request(text: str) -> tuple[str, int]:
    """``NAME=PORT`` → (name, port); the port is 0 (any) or 1…65535."""
    name, sep, port = text.partition("=")
    if not sep or not name or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"--port wants NAME=PORT (PORT 0 for any free port), got {text!r}")
    return name, int(port)


def check_port_requests(defaults: Mapping[str, int], requested: Mapping[str, int]) -> None:
    """Refuse a name that is no component, and a named port something already listens on."""
    for name, port in requested.items():
        if name not in defaults:
            known = ", ".join(defaults)
            raise InvalidArgument(f"--port {name}={port}: no component {name!r} (known: {known})")
    ports = [port for port in requested.values() if port != ANY_PORT]
    if len(set(ports)) != len(ports):
        raise InvalidArgument(f"--port names one port for two components: {dict(requested)}")
    for name, port in requested.items():
        if port != ANY_PORT and not port_is_free(port):
            raise FailedPrecondition(
                f"port {port} asked for {name} (--port {name}={port}) is in use; "
                f"choose another, or --port {name}=0 for any free one"
            )


def plan_ports(
    defaults: Mapping[str, int],
    requested: Mapping[str, int],
    previous: Mapping[str, int],
    *,
    any_ports: bool = False,
) -> dict[str, int]:
    """A distinct port for every component of ``defaults`` (name → default port)."""
    check_port_requests(defaults, requested)
    well_known = set(defaults.values())
    taken = {port for port in requested.values() if port != ANY_PORT}
    chosen: dict[str, int] = {}
    for name, default in defaults.items():
        asked = requested.get(name, ANY_PORT if any_ports else None)
        if asked is not None and asked != ANY_PORT:
            chosen[name] = asked
            continue
        last = previous.get(name, ANY_PORT)
        if asked == ANY_PORT:
            preferred = ANY_PORT if last in well_known else last
        else:
            preferred = last or default
        chosen[name] = pick_port(preferred, taken)
        taken.add(chosen[name])
    return chosen
