"""Serving the registry's champions: a running `niche serve` follows the `champion` alias without a restart.

Every `interval` seconds the poller asks MLflow which version of each served specialist is the champion; a
new one is downloaded beside the served directory, swapped in atomically under the engine's lock, and the
engine re-reads it. Requests already decoding finish on the adapter they started with (the engine retires
it only once they are done); new requests get the new one.
"""

from __future__ import annotations

import logging
import threading

from niche import tracking
from niche.serve.base import EngineCore

log = logging.getLogger("niche.serve")


class ChampionPoller:
    def __init__(self, engine: EngineCore, interval: float) -> None:
        self.engine = engine
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="niche-champion-poller", daemon=True)

    def check_once(self) -> list[str]:
        """Deploy and reload every specialist whose champion changed; returns their names."""
        updated = []
        for name in list(self.engine.specialists):
            champion = tracking.version_with_alias(name, tracking.CHAMPION)
            if champion is None or self.engine.revisions.get(name) == f"v{champion.version}":
                continue
            directory = self.engine.directory / name
            # The pipeline may have deployed it here already (serving its output_dir): then only reload.
            if tracking.deployed_version(directory) != champion.version:
                tracking.deploy(champion, directory, swap_lock=self.engine.lock)
            self.engine.refresh(name)
            log.info('{"event": "champion", "model": "%s", "version": "%s"}', name, champion.version)
            updated.append(name)
        return updated

    def start(self) -> ChampionPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - a registry outage must not stop serving; the next poll retries
                log.exception("champion poll failed")
