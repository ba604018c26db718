"""Render stage: one email (subject, HTML, text) per recipient from the shared templates."""

from digest.render.renderer import (
    EmailRenderer,
    Recipient,
    RenderedEmail,
    RenderItem,
    get_renderer,
    render_items_from_models,
)

__all__ = [
    "EmailRenderer",
    "Recipient",
    "RenderItem",
    "RenderedEmail",
    "get_renderer",
    "render_items_from_models",
]
