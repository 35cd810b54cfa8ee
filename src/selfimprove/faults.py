"""Test-only fault injection: kill this process, hard, at a named point.

``SELFIMPROVE_FAULT=kill:<point>`` (several: comma-separated) makes :func:`fault` SIGKILL the
process when it reaches ``<point>``: no ``finally`` block, no atexit handler and no signal
handler runs, exactly as when the machine loses power or the OOM killer strikes. The points:

* ``phase:<name>`` just after a loop phase is marked done in ``state.json``
  (``phase:r0/baseline``, ``phase:r1_targeted/data`` …), and ``phase:<name>:before`` just
  before; ``eval:batch`` after an evaluation writes a batch of records;
* ``train:saved`` after an adapter is written but before it is published; ``<name>/train``
  at a training step of a loop phase (e.g. ``r1_random/train``);
* ``loop:summary`` after the loop's summary is stored, before its report is rendered;
* ``convert:saved`` after the embedded model's conversion wrote its files, before its
  ``COMPLETE`` marker.

An unset variable costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "SELFIMPROVE_FAULT"


def fault(point: str) -> None:
    """SIGKILL this process if ``SELFIMPROVE_FAULT`` names ``kill:<point>``."""
    spec = os.environ.get(ENV)
    if spec and f"kill:{point}" in (s.strip() for s in spec.split(",")):
        os.kill(os.getpid(), signal.SIGKILL)
