"""The newsroom's listing as its HTML page: each item a block with its title in a heading
(its anchor the item's link), labelled fields ("Publishing date", "Content type", "Where we
are", "What we do") and a summary; a pager whose "next" link is the next page.

Read with lxml's HTML parser (ADR 0033): it recovers from broken and cut markup the way a
browser would, and it keeps each element's source line, so a warning names the line of the
page. The items are found by their labelled date, not by the newsroom's class names, so the
page's header, navigation and footer are never read as items.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from lxml import etree
from lxml import html as lxml_html
from lxml.html import HtmlElement

from digest.errors import IngestError
from digest.ingest.decode import decode_page
from digest.ingest.listing import (
    DamagedItem,
    ListingDocument,
    listing_date,
    listing_item,
    no_items_error,
)
from digest.ingest.parsed import ItemIn, is_web_url, to_plain_text

# A label alone ("Content type", its value in the next element) or with its value after a
# colon; "Publishing date of this site: 2025" in a footer is neither.
_LABEL = re.compile(r"^(publishing date|content type|where we are|what we do)\s*(?::\s*(.*))?$",
                    re.IGNORECASE | re.DOTALL)
# Never text of an item: their content is code or a document of its own.
_NOISE = ("script", "style", "noscript", "template", "iframe", "object", "svg", "button")
_HEADINGS = "self::h1 or self::h2 or self::h3 or self::h4 or self::h5 or self::h6"
_SHAPE = ("an item is a heading with the title's link and a 'Publishing date' field, "
          "e.g. <h3><a href=...>Title</a></h3> <div>Publishing date: 9 October 2025</div>")
_CUT_END = re.compile(r"</html\s*>\s*$", re.IGNORECASE)
_READ_MORE = re.compile(r"^(read more|more|continue reading)\b", re.IGNORECASE)  # not summary


@dataclass
class _Field:
    key: str
    value: str
    line: int
    elements: list[HtmlElement] = field(default_factory=list)


def read_listing_html(body: bytes, *, content_type: str | None = None,
                      base_url: str | None = None) -> ListingDocument:
    """The items of a listing's HTML page, with their links resolved against ``base_url``
    (or the page's ``<base href>``), a warning per damaged item left out, and the next
    page's address. IngestError when the page holds no item at all."""
    text = decode_page(body, content_type, what="listing page")
    root = _parse(text)
    etree.strip_elements(root, *_NOISE, with_tail=False)
    base = _base_url(root, base_url)
    # A page copied or fetched in part has no closing </html>: its last text may be cut.
    final_text = _final_text_element(root) if not _CUT_END.search(text) else None

    warnings: list[str] = []
    containers = _item_containers(root, warnings)
    items: list[ItemIn] = []
    for container in containers:
        ends_page = final_text is not None and _contains(container, final_text)
        try:
            items.append(_html_item(container, base, final_text if ends_page else None,
                                    warnings))
        except DamagedItem as damaged:
            warnings.append(f"{damaged}; left out")
    warnings.extend(_undated_items(root, containers))
    warnings.sort(key=_line_of)
    if not items:
        raise no_items_error("HTML listing page", warnings, _SHAPE)
    return ListingDocument(items, warnings, _next_page(root, base))


def _parse(text: str) -> HtmlElement:
    # An XHTML page's XML declaration names an encoding lxml refuses on decoded text.
    text = re.sub(r"^\s*<\?xml[^>]*>", "", text, count=1)
    if not text.strip():
        raise IngestError(f"the HTML listing page is empty; {_SHAPE}")
    parser = lxml_html.HTMLParser(remove_comments=True, remove_pis=True, no_network=True)
    try:
        return lxml_html.document_fromstring(text, parser=parser)
    except (etree.ParserError, ValueError) as exc:
        raise IngestError(f"the HTML listing page cannot be parsed: {exc}") from None


def _line_of(warning: str) -> int:
    match = re.match(r"line (\d+)", warning)
    return int(match.group(1)) if match else 0


def _words(value: str | None) -> str:
    return " ".join((value or "").split())


def _base_url(root: HtmlElement, page_url: str | None) -> str:
    """What the page's links are relative to: its <base href>, else its address; a page read
    from a file has none, and its canonical link (the address it was saved from) stands in."""
    if not page_url:
        canonical = root.xpath("//link[@href][contains(concat(' ', normalize-space(@rel), ' '),"
                               " ' canonical ')]")
        page_url = _web_link("", canonical[0].get("href")) if canonical else None
    base = root.find(".//base[@href]")
    if base is not None:
        return urljoin(page_url or "", base.get("href", "").strip())
    return page_url or ""


def _web_link(base: str, href: str | None) -> str | None:
    if not href or not href.strip():
        return None
    url = urljoin(base, href.strip())
    return url if is_web_url(url) and urlsplit(url).netloc else None


def _final_text_element(root: HtmlElement) -> HtmlElement | None:
    """The element holding the page's last words (where a cut page was cut)."""
    last = None
    for event, element in etree.iterwalk(root, events=("start", "end")):
        if event == "start" and _words(element.text):
            last = element
        elif event == "end" and _words(element.tail) and element.getparent() is not None:
            last = element.getparent()
    return last


def _contains(ancestor: HtmlElement, element: HtmlElement) -> bool:
    return any(node is ancestor for node in element.iterancestors()) or element is ancestor


def _own_label(element: HtmlElement) -> re.Match[str] | None:
    """A field label: an element whose own first words are "Publishing date", "Content type",
    "Where we are" or "What we do" (a wrapper around label and value is not one)."""
    if not isinstance(element.tag, str) or not _words(element.text):
        return None
    return _LABEL.match(_words(element.text_content()))


def _title_element(container: HtmlElement) -> HtmlElement | None:
    heading = container.xpath(f".//*[{_HEADINGS}][normalize-space()]")
    if heading:
        return heading[0]
    titled = container.xpath(".//a[@href][contains(@class, 'title') or "
                             "contains(../@class, 'title')][normalize-space()]")
    return titled[0] if titled else None


def _item_containers(root: HtmlElement, warnings: list[str]) -> list[HtmlElement]:
    """Each dated item's block (its <article>, else the smallest block around its date label
    holding a title); a date with no title of its own is a warning."""
    found: list[HtmlElement] = []
    # Sets of elements, not of id()s: held, an element keeps its one proxy (lxml).
    seen: set[HtmlElement] = set()
    for label in root.iter():
        match = _own_label(label)
        if match is None or match.group(1).lower() != "publishing date":
            continue
        # Its <article> when it has one (a heading nearer the label may be a sub-heading).
        container = next(label.iterancestors("article"), None)
        if container is None:
            container = next((a for a in label.iterancestors()
                              if a.tag not in ("body", "html") and _title_element(a) is not None),
                             None)
        dates_inside = 0 if container is None else sum(
            1 for e in container.iter()
            if (m := _own_label(e)) is not None and m.group(1).lower() == "publishing date")
        if container is None or dates_inside > 1 or _title_element(container) is None:
            warnings.append(f"line {label.sourceline}: a publishing date with no title of its "
                            "own; left out")
            continue
        if container not in seen:
            seen.add(container)
            found.append(container)
    return found


def _undated_items(root: HtmlElement, containers: list[HtmlElement]) -> list[str]:
    """Blocks shaped like the items (the same tag and class beside them, or an <article>)
    that hold a title but no publishing date: a damaged item, named, never stored."""
    known = set(containers)
    around = {a for c in containers for a in c.iterancestors()}  # blocks holding items
    peers: list[HtmlElement] = list(root.iter("article"))
    for container in containers:
        parent = container.getparent()
        if parent is not None:
            peers.extend(s for s in parent if s.tag == container.tag
                         and s.get("class") == container.get("class"))
    warnings, reported = [], set()
    for peer in peers:
        if peer in known or peer in reported or peer in around:
            continue
        if any(a in known for a in peer.iterancestors()):
            continue
        title = _title_element(peer)
        if title is not None:
            reported.add(peer)
            warnings.append(f"line {peer.sourceline}: item {_words(title.text_content())[:80]!r}"
                            " has no publishing date; left out")
    return warnings


def _field_value(label: HtmlElement, inline: str) -> tuple[str, list[HtmlElement]]:
    """A label's value: the words after it in its own element, else its tail and the
    elements that follow it (each of their innermost elements one value)."""
    if inline:
        return inline, [label]
    pieces = [_words(label.tail)] if _words(label.tail) else []
    label.tail = None  # read: not summary text
    used = [label]
    for sibling in label.itersiblings():
        if _own_label(sibling) is not None:
            break
        leaves = [_words(e.text_content()) for e in sibling.iter()
                  if isinstance(e.tag, str) and len(e) == 0 and _words(e.text_content())]
        pieces.extend(leaves or ([_words(sibling.text_content())]
                                 if _words(sibling.text_content()) else []))
        used.append(sibling)
    return ", ".join(pieces), used


def _fields(container: HtmlElement) -> list[_Field]:
    fields: list[_Field] = []
    read: set[HtmlElement] = set()  # inside a field already
    for element in list(container.iter()):
        if element in read:
            continue
        match = _own_label(element)
        if match is None:
            continue
        value, used = _field_value(element, (match.group(2) or "").strip())
        fields.append(_Field(match.group(1).lower(), value, element.sourceline or 0, used))
        read.update(e for u in used for e in u.iter())
    return fields


def _html_item(container: HtmlElement, base: str,
               final_text: HtmlElement | None, warnings: list[str]) -> ItemIn:
    title_element = _title_element(container)
    assert title_element is not None  # a container is chosen for its title
    anchor = title_element if title_element.tag == "a" else title_element.find(".//a[@href]")
    title = to_plain_text(lxml_html.tostring(title_element, encoding="unicode",
                                             with_tail=False))
    line = container.sourceline
    if not title:
        raise DamagedItem(f"line {line}: the item's title is empty once its markup is removed")
    fields = _fields(container)
    date = next(f for f in fields if f.key == "publishing date")
    try:
        published_at = listing_date(date.value, date.line)
    except DamagedItem as damaged:
        cut = final_text is not None and any(_contains(e, final_text) for e in date.elements)
        reason = (f"line {date.line}: the page ends inside the publishing date {date.value!r}"
                  if cut else str(damaged))
        raise DamagedItem(f"{reason}; item {title[:80]!r}") from None

    values: dict[str, str] = {}
    for found in fields:
        if found.key == "publishing date":
            continue
        if final_text is not None and any(_contains(e, final_text) for e in found.elements):
            # The page ends inside this field: "P" of "Press release" is no content type.
            warnings.append(f"line {found.line}: the page ends inside the {found.key!r} field "
                            f"({found.value!r}); that field of item {title[:80]!r} is left out")
            continue
        values[found.key] = (f"{values[found.key]}, {found.value}" if found.key in values
                             else found.value)

    read_more = [a for a in container.iter("a") if _READ_MORE.match(_words(a.text_content()))]
    for element in [title_element] + [e for f in fields for e in f.elements] + read_more:
        if element.getparent() is not None:
            element.drop_tree()
    summary = to_plain_text(lxml_html.tostring(container, encoding="unicode", with_tail=False))
    url = _web_link(base, anchor.get("href")) if anchor is not None else None
    return listing_item(title=title, published_at=published_at, url=url, fields=values,
                        summary=summary)


def _next_page(root: HtmlElement, base: str) -> str | None:
    """The pager's next page: a rel="next" link, else a link in an element classed "next",
    else a link reading "Next"."""
    candidates = root.xpath(
        "//link[@href][contains(concat(' ', normalize-space(@rel), ' '), ' next ')]"
        " | //a[@href][contains(concat(' ', normalize-space(@rel), ' '), ' next ')]")
    candidates += root.xpath("//*[contains(@class, 'next')]/descendant-or-self::a[@href]")
    candidates += [a for a in root.iter("a")
                   if re.sub(r"[^a-z ]", "", _words(a.text_content()).lower()).strip()
                   in ("next", "next page") and a.get("href")]
    for candidate in candidates:
        url = _web_link(base, candidate.get("href"))
        if url and url != base:
            return url
    return None
