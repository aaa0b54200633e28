"""The SQL surface of a filter database: read-only, confined, one statement at a time.

A query is user text run by DuckDB, which can write files (``COPY ... TO``), create databases
(``ATTACH``), read any file (``read_csv('/etc/passwd')``) and install extensions from the
network. Three rules close that:

1. :func:`check_query`: exactly one statement, and it is a ``SELECT`` (``WITH``, ``VALUES``,
   ``DESCRIBE``, ``SUMMARIZE`` and friends parse as ``SELECT``).
2. :func:`check_condition`: a ``--where``/``--groups`` condition is parsed as a single SQL
   expression and re-emitted inside parentheses, so it cannot end the statement it is put in.
3. :func:`lock_down`: the connection's views read Arrow tables and datasets registered by the
   caller, never a path; then all file access is switched off (``enable_external_access``:
   no ``COPY``, ``ATTACH``, ``read_csv``, URL or extension), extension auto-install/-load is off,
   and the configuration is locked so no statement can switch any of it back.
"""

from __future__ import annotations

from .errors import DatabaseError

#: DuckDB settings for a query connection, fixed at connect time.
CONNECT_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def check_query(sql: str) -> None:
    """Raise :class:`DatabaseError` unless ``sql`` is one read-only (``SELECT``) statement."""
    import duckdb

    if not isinstance(sql, str) or not sql.strip():
        raise DatabaseError("empty SQL query: give a SELECT statement, e.g. 'SELECT * FROM models'")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise DatabaseError(f"query failed: {_first_line(exc)}") from None
    if not statements:
        raise DatabaseError("empty SQL query (only comments or semicolons): give a SELECT statement")
    if len(statements) > 1:
        raise DatabaseError(f"one SQL statement at a time: the query holds {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:  # EXPLAIN ANALYZE would run what it explains
        name = str(kind).rsplit(".", 1)[-1]
        raise DatabaseError(f"queries are read-only: only SELECT is allowed, not {name}")


def check_condition(condition: str, what: str = "--where") -> str:
    """``condition`` as one parenthesised SQL expression; :class:`DatabaseError` when it is
    empty, not valid SQL, or more than one expression (e.g. ``1=1; COPY ...``)."""
    import duckdb

    if not isinstance(condition, str) or not condition.strip():
        raise DatabaseError(f"{what}: empty condition")
    try:
        expr = duckdb.SQLExpression(condition)
    except duckdb.Error as exc:
        raise DatabaseError(f"{what} {condition!r} is not one SQL condition: {_first_line(exc)}") from None
    return f"({expr})"


def connect():
    """An in-memory DuckDB connection that cannot install or auto-load extensions."""
    import duckdb

    return duckdb.connect(":memory:", config=dict(CONNECT_CONFIG))


def lock_down(con) -> None:
    """After the views are made: no file or network access at all; configuration locked."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
