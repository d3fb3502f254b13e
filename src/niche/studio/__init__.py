"""niche studio: the web page over a specialists directory, on the server of `niche serve` (same engine, same
API, same keys): specialist cards and details, a side-by-side playground, data checks and training jobs, the
reports, and the live state of serving. `niche studio DIR` or `niche serve DIR --ui`.

Its state (the jobs database, uploads, job logs) lives in `DIR.studio/` beside DIR (`niche.studio.api`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from niche.config import ServeSettings
from niche.errors import ConfigError, require_extra
from niche.serve import IN_PROCESS_ENGINES, serve_specialists


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return all(ipaddress.ip_address(address[4][0]).is_loopback for address in socket.getaddrinfo(host, None))


def run_studio(
    directory: Path,
    settings: ServeSettings,
    *,
    api_keys: frozenset[str] = frozenset(),
    say: Callable[[str], None] = print,
) -> None:
    """Serve DIR's specialists with the studio at / until interrupted. Without API keys it listens on loopback
    only: the page can start training and read reports, so it is never opened to a network without a key."""
    if settings.engine not in IN_PROCESS_ENGINES:
        raise ConfigError(
            f"niche studio runs the engine in its own process: --engine {' or '.join(IN_PROCESS_ENGINES)}, "
            f"not {settings.engine}"
        )
    if not api_keys and not is_loopback(settings.host):
        raise ConfigError(
            f"--host {settings.host} without an API key would let anyone who reaches it train and serve models: "
            "give --api-key KEY (or NICHE_API_KEYS) to open the studio beyond this machine"
        )
    require_extra("serve", ("fastapi", "uvicorn"), "niche studio")
    from niche.studio.api import mount_studio  # fastapi is the serve extra's: checked just above

    mounted: list[Any] = []

    def extend(app: Any) -> None:
        studio = mount_studio(app, directory)
        studio.runner.start()
        mounted.append(studio)
        url = f"http://{settings.host}:{settings.port}/"
        say(f"niche studio: open {url}")
        if api_keys:
            say("the page asks for one of the API keys")
        else:
            say(f"no API keys: listening on {settings.host} only, so only this machine can open the studio")
        say(f"studio state (jobs, uploads, logs): {studio.state_dir}")

    try:
        serve_specialists(directory, settings, api_keys=api_keys, say=say, extend_app=extend)
    finally:
        for studio in mounted:
            studio.runner.stop()
