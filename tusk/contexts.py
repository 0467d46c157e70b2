"""Named clusters the CLI can talk to (pachctl's contexts), kept in ``$TUSK_HOME/contexts.json``.

One CLI reaches the local cluster and, say, one on Kubernetes: each context names a
PFS URL and a PPS URL (and, for a ``tusk up`` cluster, its cluster id). Which endpoint
a command uses, strongest first: ``TUSK_PFS_URL``/``TUSK_PPS_URL`` in the environment,
the active context, ``$TUSK_HOME/config.toml``. ``tusk up`` writes the ``local`` context
and makes it active when none is.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.api.names import check_name
from shared.platform.config import Config, load_config, tusk_home
from shared.platform.errors import InvalidArgument, NotFound

CONTEXTS_FILE = "contexts.json"
LOCAL = "local"


@dataclass(frozen=True)
class Context:
    """Where one cluster's services answer."""

    name: str
    pfs_url: str
    pps_url: str
    # Set for a ``tusk up`` cluster: responses must carry it (see PfsClient).
    cluster_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Contexts:
    """The file's contents: every context and the active one's name ('' for none)."""

    contexts: dict[str, Context]
    active: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "active_context": self.active,
            "contexts": {name: c.to_json() for name, c in sorted(self.contexts.items())},
        }


@dataclass(frozen=True)
class Endpoints:
    """What a command connects to, and where that choice came from (for error lines)."""

    pfs_url: str
    pps_url: str
    cluster_id: str
    # The context's name, or '' when the endpoints came from the environment or config.toml.
    context: str = ""

    def describe(self, url: str) -> str:
        """``context 'k8s' (http://…)`` — the prefix of a connection error."""
        if self.context:
            return f"context {self.context!r} ({url})"
        return url


def contexts_file(home: Path | None = None) -> Path:
    return (home or tusk_home()) / CONTEXTS_FILE


def load_contexts(home: Path | None = None) -> Contexts:
    path = contexts_file(home)
    if not path.exists():
        return Contexts({})
    try:
        data = json.loads(path.read_text())
        found = {
            name: Context(name, str(c["pfs_url"]), str(c["pps_url"]), str(c.get("cluster_id", "")))
            for name, c in data.get("contexts", {}).items()
        }
        return Contexts(found, str(data.get("active_context", "")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidArgument(f"{path} is not a valid contexts file: {exc}") from None


def save_contexts(contexts: Contexts, home: Path | None = None) -> None:
    """Write the file atomically (a crash never leaves half a file), private as $TUSK_HOME is."""
    path = contexts_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(contexts.to_json(), indent=2) + "\n")
    os.replace(partial, path)


def _check_url(what: str, url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise InvalidArgument(f"{what} must be an http(s) URL, got {url!r}")
    return url.rstrip("/")


def set_context(
    name: str,
    *,
    url: str | None = None,
    pfs_url: str | None = None,
    pps_url: str | None = None,
    cluster_id: str | None = None,
    home: Path | None = None,
) -> Context:
    """Create or change a context; ``url`` is one base URL for both services (an ingress)."""
    check_name("context", name)
    contexts = load_contexts(home)
    old = contexts.contexts.get(name)
    pfs = pfs_url or url or (old.pfs_url if old else None)
    pps = pps_url or url or (old.pps_url if old else None)
    if pfs is None or pps is None:
        raise InvalidArgument(
            f"context {name!r} needs its URLs: --url BASE, or --pfs URL --pps URL"
        )
    context = Context(
        name,
        _check_url("the PFS URL", pfs),
        _check_url("the PPS URL", pps),
        cluster_id if cluster_id is not None else (old.cluster_id if old else ""),
    )
    save_contexts(Contexts({**contexts.contexts, name: context}, contexts.active), home)
    return context


def set_active(name: str, home: Path | None = None) -> None:
    contexts = load_contexts(home)
    if name not in contexts.contexts:
        known = ", ".join(sorted(contexts.contexts)) or "none yet"
        raise NotFound(f"no context named {name!r} (known: {known})")
    save_contexts(Contexts(contexts.contexts, name), home)


def delete_context(name: str, home: Path | None = None) -> None:
    contexts = load_contexts(home)
    if name not in contexts.contexts:
        raise NotFound(f"no context named {name!r}")
    rest = {k: v for k, v in contexts.contexts.items() if k != name}
    save_contexts(Contexts(rest, "" if contexts.active == name else contexts.active), home)


def write_local_context(home: Path, config: Config) -> None:
    """``tusk up``: the ``local`` context names this cluster; active unless another one is."""
    contexts = load_contexts(home)
    local = Context(LOCAL, config.pfs_url, config.pps_url, config.cluster_id)
    save_contexts(Contexts({**contexts.contexts, LOCAL: local}, contexts.active or LOCAL), home)


def resolve_endpoints(environ: dict[str, str] | None = None) -> Endpoints:
    """The endpoints a command uses: environment, then the active context, then config.toml."""
    env = os.environ if environ is None else environ
    config = load_config(environ=dict(env))
    if "TUSK_PFS_URL" in env or "TUSK_PPS_URL" in env:
        return Endpoints(config.pfs_url, config.pps_url, config.cluster_id)
    contexts = load_contexts()
    if contexts.active:
        context = contexts.contexts.get(contexts.active)
        if context is None:
            raise NotFound(
                f"the active context {contexts.active!r} is not defined "
                f"(tusk config set active-context NAME)"
            )
        return Endpoints(context.pfs_url, context.pps_url, context.cluster_id, context.name)
    return Endpoints(config.pfs_url, config.pps_url, config.cluster_id)
