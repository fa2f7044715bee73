"""The public testing kit (needs the ``testing`` extra: pytest and hypothesis).

- :class:`SessionConformance`: the behavioural suite every storage adapter must
  pass; subclass it in a test module with an ``engine`` fixture for your adapter.
- :func:`differential_state_machine`: a hypothesis state machine that runs random
  session operations on several databases in lockstep and checks storage, the
  identity map and journal replay against each other after every step.
- :func:`stored_rows` and :func:`assert_storage_replays_journal`: the journal
  as an oracle for your own models and your own tests.
"""

from uow.testing.conformance import SessionConformance
from uow.testing.oracle import assert_storage_replays_journal, stored_rows
from uow.testing.state_machine import DifferentialMachine, differential_state_machine

__all__ = [
    "DifferentialMachine",
    "SessionConformance",
    "assert_storage_replays_journal",
    "differential_state_machine",
    "stored_rows",
]
