"""The public testing kit (needs the ``testing`` extra: pytest and hypothesis).

- :class:`SessionConformance`: the behavioural suite every storage adapter must
  pass; subclass it in a test module with an ``engine`` fixture for your adapter.
- :func:`differential_state_machine`: a hypothesis state machine that runs random
  session operations on several databases in lockstep and checks storage, the
  identity map and journal replay against each other after every step.
"""

from uow.testing.conformance import SessionConformance
from uow.testing.state_machine import DifferentialMachine, differential_state_machine

__all__ = ["DifferentialMachine", "SessionConformance", "differential_state_machine"]
