"""The facet a person types, as the CLI and the admin read it."""

from __future__ import annotations

import pytest

from digest.errors import ValidationError
from digest.taxonomy_edit import facet_of


@pytest.mark.parametrize(("typed", "facet"), [
    ("theme", "theme"), ("Themes", "theme"), ("location", "location"),
    ("content-type", "content_type"), ("content type", "content_type"), ("type", "content_type"),
    ("content_type", "content_type")])
def test_every_spelling_of_a_facet_is_read(typed, facet):
    assert facet_of(typed) == facet


def test_an_unknown_facet_names_the_valid_ones():
    with pytest.raises(ValidationError, match="unknown facet 'place'; use theme, location or "
                                              "content-type"):
        facet_of("place")
