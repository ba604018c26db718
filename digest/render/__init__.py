"""Render stage: one email (subject, preheader, HTML, text) per recipient.

``renderer``: ``EmailRenderer`` (MJML compiled once, Jinja per message) and ``get_renderer``
(one renderer per process and settings); ``items``: what it takes and gives; ``text`` and
``dates``: the helpers behind the item views.
"""

from digest.render.items import Recipient, RenderedEmail, RenderItem, render_items_from_models
from digest.render.renderer import EmailRenderer, get_renderer

__all__ = [
    "EmailRenderer",
    "Recipient",
    "RenderItem",
    "RenderedEmail",
    "get_renderer",
    "render_items_from_models",
]
