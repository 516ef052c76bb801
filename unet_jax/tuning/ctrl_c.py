"""Ctrl-C held back while a sweep writes to its study, let through while a trial trains.

A KeyboardInterrupt that lands inside a database write can leave Optuna's session unusable: the
trial can then be neither marked failed nor queued for its retry (Optuna stops on an internal
assertion instead), and the next run cannot resume it. Holding the signal over those writes and
delivering it once they are done keeps Ctrl-C at any moment a resumable stop.
"""

import contextlib
import signal
import threading
from typing import Iterator


class CtrlC:
  """`held()` defers SIGINT to the block's end; `let_through()` restores the handler that was in place
  before the outermost `held()` (Python's KeyboardInterrupt, or an ignored signal in a background job)."""

  def __init__(self):
    self._outer = None
    self._depth = 0
    self._pending = False

  def _hold(self, signum: int, frame: object) -> None:
    del signum, frame
    self._pending = True

  def _deliver(self) -> None:
    if self._pending:
      self._pending = False
      signal.raise_signal(signal.SIGINT)  # to the handler now in place

  @contextlib.contextmanager
  def held(self) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
      yield
      return
    previous = signal.signal(signal.SIGINT, self._hold)
    if not self._depth:
      self._outer = previous
    self._depth += 1
    try:
      yield
    finally:
      self._depth -= 1
      signal.signal(signal.SIGINT, previous)
      self._deliver()

  @contextlib.contextmanager
  def let_through(self) -> Iterator[None]:
    if not self._depth:  # not inside held(): nothing is being held
      yield
      return
    previous = signal.signal(signal.SIGINT, self._outer)
    try:
      self._deliver()  # a Ctrl-C held back since the trial started stops it now
      yield
    finally:
      signal.signal(signal.SIGINT, previous)
