"""``digest taxonomy``: the themes, locations and content types subscribers choose from."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from digest.cli._common import console, ensure_db, session_scope

app = typer.Typer(help="Themes, locations and content types.", no_args_is_help=True)


@app.command("seed")
def taxonomy_seed(
    source: Path | None = typer.Argument(  # noqa: B008
        None, help="A JSON taxonomy file (themes, locations, content_types); the newsroom's "
        "published one (shipped with digest) by default."),
) -> None:
    """Add the newsroom's themes, locations (with their regions) and content types that are
    not known yet, so subscribers can choose them before the first ingest. Running it again
    adds nothing."""
    from digest import taxonomy

    names = taxonomy.read_published(source or taxonomy.PUBLISHED_FILE)
    ensure_db()
    with session_scope() as session:
        created = taxonomy.seed(session, names)
    for facet, new in created.items():
        label = facet.replace("_", " ")
        said = f"{len(new)} added: {', '.join(new)}" if new else "nothing new"
        console.print(f"{label}s: {said}", markup=False, highlight=False)


@app.command("list")
def taxonomy_list() -> None:
    """Every theme, location (with its region) and content type."""
    from digest import taxonomy

    ensure_db()
    table = Table("facet", "name", "region")
    with session_scope() as session:
        for name in taxonomy.list_names(session, "theme"):
            table.add_row("theme", name, "")
        for name, region in taxonomy.location_regions(session):
            table.add_row("location", name, region or "")
        for name in taxonomy.list_names(session, "content_type"):
            table.add_row("content type", name, "")
    console.print(table)


FACET_HELP = "theme, location or content-type"


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command("rename")
def taxonomy_rename(
    facet: str = typer.Argument(..., help=FACET_HELP),
    name: str = typer.Argument(..., help="The term's name now."),
    new_name: str = typer.Argument(..., help="Its new name."),
) -> None:
    """Rename a term; its items and the filters that chose it keep it. A name another term
    has already is refused: merge them instead."""
    from digest import taxonomy_edit

    ensure_db()
    with session_scope() as session:
        term = taxonomy_edit.rename(session, taxonomy_edit.facet_of(facet), name, new_name)
        _say(f"renamed {name!r} to {term.name!r}")


@app.command("merge")
def taxonomy_merge(
    facet: str = typer.Argument(..., help=FACET_HELP),
    names: list[str] = typer.Argument(..., help="The terms to merge away."),  # noqa: B008
    into: str = typer.Option(..., "--into", help="The term they become (it must exist)."),
) -> None:
    """Make several terms one: their items and filters get INTO (once), then they are gone.
    A filter that chose any of them now chooses INTO, so it also takes the others' items."""
    from digest import taxonomy_edit

    ensure_db()
    with session_scope() as session:
        term = taxonomy_edit.merge(session, taxonomy_edit.facet_of(facet), names, into)
        _say(f"merged {', '.join(map(repr, names))} into {term.name!r}")


@app.command("move")
def taxonomy_move(
    name: str = typer.Argument(..., help="The term's name."),
    from_facet: str = typer.Option(..., "--from", help=f"Where it is now: {FACET_HELP}."),
    to_facet: str = typer.Option(..., "--to", help=f"Where it belongs: {FACET_HELP}."),
    keep_existing_type: bool = typer.Option(
        False, "--keep-existing-type",
        help="Moving to content types: items that have a type already keep theirs (and lose "
             "this term) instead of the move being refused."),
) -> None:
    """Move a term to another facet (a term of that name there is reused): its items and the
    filters that chose it follow."""
    from digest import taxonomy_edit

    ensure_db()
    with session_scope() as session:
        report = taxonomy_edit.move(session, name, taxonomy_edit.facet_of(from_facet),
                                    taxonomy_edit.facet_of(to_facet),
                                    keep_existing_type=keep_existing_type)
        _say(report.summary(taxonomy_edit.facet_of(from_facet)))


@app.command("review")
def taxonomy_review() -> None:
    """Feed categories no facet could take (no domain, a name known nowhere or in several),
    waiting to be filed or dismissed."""
    from digest import taxonomy_edit

    ensure_db()
    with session_scope() as session:
        waiting = taxonomy_edit.review_list(session)
    if not waiting:
        _say("nothing to review")
        return
    table = Table("name", "seen", "items", "last seen", "source", "why")
    for row in waiting:
        table.add_row(row.name, str(row.seen_count), str(row.items),
                      f"{row.last_seen_at:%Y-%m-%d %H:%M}", row.source, row.reason)
    console.print(table)
    _say("file one: digest taxonomy file NAME --as theme|location|content-type; "
         "or: digest taxonomy dismiss NAME")


@app.command("file")
def taxonomy_file(
    name: str = typer.Argument(..., help="A name on the review list."),
    facet: str = typer.Option(..., "--as", help=FACET_HELP),
) -> None:
    """File a reviewed category: the term is found or made in that facet, the items that
    carried it get it, and later feeds file it by themselves."""
    from digest import taxonomy_edit

    ensure_db()
    with session_scope() as session:
        filed = taxonomy_edit.file_review(session, name, taxonomy_edit.facet_of(facet))
        line = f"filed {filed.term.name!r} as {facet}: {filed.items} item(s) tagged"
        if filed.kept_own_type:
            line += (f"; {len(filed.kept_own_type)} item(s) kept the content type they had "
                     f"(ids {', '.join(map(str, filed.kept_own_type[:10]))})")
        _say(line)


@app.command("dismiss")
def taxonomy_dismiss(
    name: str = typer.Argument(..., help="A name on the review list."),
) -> None:
    """Take a category off the review list without filing it (it returns if seen again)."""
    from digest import taxonomy_edit

    ensure_db()
    with session_scope() as session:
        taxonomy_edit.dismiss_review(session, name)
    _say(f"dismissed {name!r}")
