"""Count communication collectives in XLA HLO text (``compiled.as_text()``), for tests that check plans.

The implementation lives in ``autopar.audit`` (one HLO reader for the audit and the tests); this module
re-exports it under the names the tests use: ``count_collectives`` (kind -> number of instructions, combined
tuple collectives counted per element), ``collective_lines``, ``collective_bytes``, ``describe``, ``KINDS``.
"""

from __future__ import annotations

from autopar.audit import COMBINABLE as COMBINABLE
from autopar.audit import KINDS as KINDS
from autopar.audit import collective_bytes as collective_bytes
from autopar.audit import collective_lines as collective_lines
from autopar.audit import count_collectives as count_collectives
from autopar.audit import describe as describe
