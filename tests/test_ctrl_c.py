"""Ctrl-C held back over a sweep's writes to its study and let through while a trial trains."""

import os
import signal

import pytest

from unet_jax.tuning.ctrl_c import CtrlC


pytestmark = pytest.mark.usefixtures("terminal_ctrl_c")


def _ctrl_c():
  os.kill(os.getpid(), signal.SIGINT)


def test_held_delivers_ctrl_c_at_the_end_of_the_block():
  done = []
  with pytest.raises(KeyboardInterrupt):
    with CtrlC().held():
      _ctrl_c()
      done.append("write")  # the block runs to its end first
  assert done == ["write"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_let_through_stops_at_once_and_delivers_what_was_held_when_it_starts():
  interrupts, done = CtrlC(), []
  with pytest.raises(KeyboardInterrupt):
    with interrupts.held():
      with interrupts.let_through():
        _ctrl_c()
        done.append("after")  # never reached: training stops at once
  assert not done
  with pytest.raises(KeyboardInterrupt):
    with interrupts.held():
      _ctrl_c()
      done.append("write")
      with interrupts.let_through():
        done.append("training")  # never reached: the held Ctrl-C stops the trial before it trains
  assert done == ["write"]


def test_a_block_held_inside_training_defers_to_its_own_end():
  interrupts, done = CtrlC(), []
  with pytest.raises(KeyboardInterrupt):
    with interrupts.held():
      with interrupts.let_through():
        with interrupts.held():
          _ctrl_c()
          done.append("report")
        done.append("training")
  assert done == ["report"]


def test_an_ignored_ctrl_c_stays_ignored():
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job started in the background
  try:
    interrupts = CtrlC()
    with interrupts.held():
      _ctrl_c()
      with interrupts.let_through():
        _ctrl_c()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGINT, previous)
