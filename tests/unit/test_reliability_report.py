"""The reliability figures are measured and written after their checks.

Every `report(name, **figures)` call in the tests is read (ast): no figure may be a literal
(a constant such as `worker_restarts=0` stands in for a measurement), and no check (an
assert, or a wait that raises on its deadline) may follow the call in its function, so a
figure reaches test-artifacts/reliability.json only after the test checked it.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
WAITS = {"poll_until", "wait", "wait_ready", "wait_events", "wait_lists_current"}


def _literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp):
        return _literal(node.operand)
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return all(_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _literal(k) for k in node.keys) and all(
            _literal(v) for v in node.values
        )
    return False


def _name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def problems(source: str, where: str = "<test>") -> list[str]:
    """What is wrong with the report() calls of one test module."""
    out: list[str] = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef):
            continue
        calls = [
            n for n in ast.walk(fn) if isinstance(n, ast.Call) and _name(n) == "report" and n.args
        ]
        for call in calls:
            for kw in call.keywords:
                if kw.arg is not None and _literal(kw.value):
                    out.append(f"{where}:{call.lineno}: {kw.arg} is a literal, not a measurement")
            checks_after = [
                n.lineno
                for n in ast.walk(fn)
                if getattr(n, "lineno", 0) > (call.end_lineno or call.lineno)
                and (isinstance(n, ast.Assert) or (isinstance(n, ast.Call) and _name(n) in WAITS))
            ]
            if checks_after:
                out.append(
                    f"{where}:{call.lineno}: report() before the checks on lines {checks_after}"
                )
    return out


def test_every_report_call_has_measured_figures_written_after_the_checks():
    files = [p for p in TESTS.rglob("*.py") if "report(" in p.read_text()]
    assert len(files) >= 5, files  # the reliability, containment, security, fuzz, bad files
    found = [
        msg for p in files for msg in problems(p.read_text(), str(p.relative_to(TESTS.parent)))
    ]
    assert found == []


def test_the_check_catches_a_literal_and_a_report_before_its_assert():
    bad = textwrap.dedent(
        """
        def test_x(w):
            check = run()
            report("x", **check.figures(), worker_restarts=0, lost=-1, ok=[True])
            assert check.ok
            w.wait(lambda st: True, 5, "up")

        def test_y(w):
            check = run()
            assert check.ok
            report("y", lost=check.lost, by={"a": sorted(check.users)})
        """
    )
    found = problems(bad)
    assert len(found) == 4, found
    assert [m.split(": ", 1)[1] for m in found[:3]] == [
        "worker_restarts is a literal, not a measurement",
        "lost is a literal, not a measurement",
        "ok is a literal, not a measurement",
    ]
    assert "report() before the checks on lines [5, 6]" in found[3]
