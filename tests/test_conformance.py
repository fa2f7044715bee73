"""The session conformance suite over every adapter of the ``engine`` fixture
(memory, SQLite, PostgreSQL; see ``conftest.py``)."""

from __future__ import annotations

from uow.testing.conformance import SessionConformance


class TestSessionConformance(SessionConformance):
    """Every session behaviour, on each adapter."""
