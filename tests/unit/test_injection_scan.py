"""SQL injection: every query is parameterized or built from constants (a scan of the source), and
injection strings fed through every text path (feedback text, ids, feature names and values, CLI
options and arguments) are stored verbatim while the schema and the other rows stay as they were.
The serving API's bodies are covered in tests/test_fuzz_serving.py."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


SINKS = {"text", "execute", "exec_driver_sql", "executemany", "copy_expert", "copy_from", "copy_to"}


ALLOWED = {
    ("refit/data/load.py", 'f"COPY feedback_staging ('): "the column list is the constant _COLUMNS",
    ("refit/data/load.py", 'f"COPY feedback ('): "the column list is the constant _DIRECT",
    ("refit/sim/sandbox.py", 'f\'DROP SCHEMA IF EXISTS "{schema}"'): "sandbox schema names come from _identifier()",
    ("refit/sim/sandbox.py", "f'CREATE SCHEMA \"{schema}\"'"): "sandbox schema names come from _identifier()",
    ("refit/sim/sandbox.py", 'f\'DROP SCHEMA IF EXISTS "{box.schema}"'): "sandbox schema names come from _identifier()",
    ("refit/sim/faults.py", 'f\'LOCK TABLE "{schema}"."{table}"'): "a sandbox schema and refit's own table names",
    ("refit/sim/faults.py", "'SELECT pid FROM pg_stat_activity"): "the appended condition is a constant string",
    (
        "refit/data/load.py",
        "f'WITH gone AS (DELETE FROM feedback WHERE {where}",
    ): "every caller's condition is a constant",
    ("refit/data/privacy.py", "f'DELETE FROM feedback WHERE {where}"): "every caller's condition is a constant",
    ("refit/data/privacy.py", "f'DELETE FROM feedback_history WHERE {where}"): "every caller's condition is a constant",
    ("refit/data/source.py", "f'SELECT * FROM ({spec.relation()})"): "the operator's REFIT_SOURCE_QUERY (a validated"
    " SELECT, run as the source's read-only role) or the table name quoted by _ident()",
    ("refit/data/source.py", "f'COPY (SELECT s.{_ident(spec.key)}::text FROM ({spec.relation()})"): "the key quoted by"
    " _ident() and the source relation as above",
    (
        "refit/data/source.py",
        "f'DELETE FROM quarantine WHERE source = :o AND feedback_id IS NOT NULL AND {gone}'",
    ): "gone is a constant condition",
    ("refit/rollout/evidence.py", "_WINDOW + '"): "the module's constant window query joined to a constant SELECT",
}


def _built(node: ast.AST) -> bool:
    """An expression that builds a string at run time: an f-string with values, +, %, .format, .join."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return True
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join")


def built_sql(path: Path) -> list[tuple[int, str]]:
    """Calls of text()/execute()/COPY whose SQL is built at run time, directly or through a local
    variable assigned a built string in the same function."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for scope in ast.walk(tree):
        if not isinstance(scope, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        built_names = {
            node.targets[0].id
            for node in ast.walk(scope)
            if isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and _built(node.value)
        }
        for node in ast.walk(scope):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            first = node.args[0]
            if name in SINKS and (_built(first) or (isinstance(first, ast.Name) and first.id in built_names)):
                found.append((node.lineno, ast.unparse(first)))
    return sorted(set(found))


def test_every_query_is_parameterized_or_built_from_constants():
    offenders = []
    for folder in ("refit", "flows", "tasks", "models"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, sql in built_sql(path):
                if not any(rel == file and sql.startswith(start) for file, start in ALLOWED):
                    offenders.append(f"{rel}:{line}: {sql[:100]}")
    assert offenders == [], "SQL built from run-time strings; use bind parameters:\n" + "\n".join(offenders)


def test_the_scan_finds_pasted_sql(tmp_path):
    """The scanner itself catches the usual ways of pasting a value into SQL."""
    sample = tmp_path / "bad.py"
    sample.write_text(
        "def f(conn, user, table):\n"
        "    conn.execute(text(f\"DELETE FROM feedback WHERE user_id = '{user}'\"))\n"
        "    conn.execute(text('SELECT * FROM ' + table))\n"
        "    query = 'DELETE FROM x WHERE id = %s' % user\n"
        "    conn.exec_driver_sql(query)\n"
        "    conn.execute(text('SELECT * FROM feedback WHERE id = :id'), {'id': user})\n"
    )
    assert [line for line, _ in built_sql(sample)] == [2, 3, 5]
