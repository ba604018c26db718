"""Fixtures of the selection tests (planning and schedule)."""

from __future__ import annotations

import pytest

from tests.factories import Taxo


@pytest.fixture
def taxo(session):
    """The fixed little taxonomy of tests/factories.py, committed."""
    t = Taxo(session)
    session.commit()
    return t
