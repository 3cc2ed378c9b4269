"""Ctrl-C and SIGTERM during training: finish the step, checkpoint it, stop with a way to go on."""
from __future__ import annotations

import signal
import threading


class Interrupted(Exception):
    """Training stopped on a signal after checkpointing; the message says how to resume."""


class StopOnSignal:
    """While entered, the first SIGINT or SIGTERM sets `reason` (the training loop saves and stops
    at the end of its step); a second one stops at once. Only rank 0 listens, from the main thread
    (signal handlers can be installed nowhere else); the loop tells the other ranks."""

    def __init__(self, listen: bool):
        self.listen = listen and threading.current_thread() is threading.main_thread()
        self.reason: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopOnSignal":
        if self.listen:
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def _on_signal(self, signum, frame) -> None:
        if self.reason is not None:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        print(f"\n{self.reason}: finishing the current step, then saving (press Ctrl-C again to stop at once)",
              flush=True)
