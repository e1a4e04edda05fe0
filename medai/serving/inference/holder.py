"""The version being served, and the swap to the version its alias points to now.

:class:`ModelHolder` keeps the current :class:`~medai.serving.inference.model.ServedModel`
and replaces it when the alias moves. A request takes the current model once and uses it
to the end, so a swap never changes a request half-way and requests in flight finish on
the old version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from medai.audit import actors
from medai.config import Settings
from medai.errors import ModelUnavailable
from medai.serving.inference.model import (
    ServedModel,
    choose_device,
    load_served_model,
    resolve_version,
)

__all__ = ["ModelHolder", "Refresh"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refresh:
    """The outcome of :meth:`ModelHolder.refresh`: the version before and after."""

    previous: str | None
    current: str
    changed: bool


class ModelHolder:
    """The model being served; :meth:`refresh` follows the alias to a new version.

    Parameters
    ----------
    settings
        ``serve_model``, ``serve_alias``, ``inference_device`` and where MLflow is.
    on_switch
        Called as ``on_switch(previous, new, actor)`` after a new version was swapped in
        (``previous`` is None for the first load), from the thread that loaded it.
    """

    def __init__(
        self,
        settings: Settings,
        on_switch: Callable[[ServedModel | None, ServedModel, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.serve_model.strip()
        self.alias = settings.serve_alias
        self._on_switch = on_switch
        # Serializes refreshes (the poller and the admin endpoint), never requests: they
        # read `current`, one attribute, atomically.
        self._lock = threading.Lock()
        self.current: ServedModel | None = None
        self.problem: str | None = f"loading models:/{self.name}@{self.alias}"

    def refresh(self, actor: str | None = None) -> Refresh:
        """Load the version the alias points to now, if it is not the one served.

        Parameters
        ----------
        actor
            Who asked (for the audit record of a switch); the service itself by default.

        Raises
        ------
        ModelUnavailable
            When the alias cannot be resolved or the new version cannot be loaded. The
            version served so far (if any) goes on being served.
        """
        with self._lock:
            served = self.current
            try:
                number, run_id = resolve_version(self.settings, self.name, self.alias)
                if served is not None and served.version == number:
                    return Refresh(served.version, number, changed=False)
                model = load_served_model(
                    self.settings,
                    name=self.name,
                    alias=self.alias,
                    device=choose_device(self.settings.inference_device),
                    version=(number, run_id),
                )
            except ModelUnavailable as exc:
                if served is None:
                    self.problem = str(exc)
                raise
            self.current = model  # the swap: later requests take the new version
            self.problem = None
        logger.info(
            "serving %s version %s (@%s) on %s, forward pass by %s%s",
            model.name,
            model.version,
            model.alias,
            model.device,
            model.backend_name,
            "" if served is None else f", replacing version {served.version}",
        )
        if self._on_switch is not None:
            self._on_switch(served, model, actor or actors.system("serve"))
        return Refresh(None if served is None else served.version, model.version, changed=True)
