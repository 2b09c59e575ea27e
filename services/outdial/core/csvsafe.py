"""CSV export safety shared by every export (lead rejects, DNC audit)."""

from __future__ import annotations


def csv_safe(value: str) -> str:
    """Neutralise spreadsheet formulas (OWASP CSV injection): a cell starting with ``=``, ``@``, tab or CR,
    or with ``+``/``-`` not followed by digits only, gets a leading apostrophe. E.164 numbers such as
    ``+12125550100`` stay as they are (a spreadsheet reads them as numbers, never as a formula)."""
    if not value:
        return value
    if value[0] in "=@\t\r" or (value[0] in "+-" and not value[1:].isdigit()):
        return "'" + value
    return value
