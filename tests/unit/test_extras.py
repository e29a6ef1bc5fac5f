"""Optional dependencies (pyproject extras): a missing one is a one-line error naming the extra,
or, where the output does not need it, a step skipped and said so."""

from __future__ import annotations

import io
import json
import sys

import pytest
from click.testing import CliRunner

from nearline_rec.extras import MissingExtra, has, pyplot, require
from nearline_rec.progress import Progress, terminal_bar
from nearline_rec.tools.cli import main


def _uninstalled(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Imports of `names` fail as if the package were not installed (None in sys.modules)."""
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_extra_in_one_line(monkeypatch):
    _uninstalled(monkeypatch, "matplotlib")
    assert not has("matplotlib")
    with pytest.raises(MissingExtra) as info:
        pyplot("the chart")
    assert str(info.value) == "the chart needs matplotlib: pip install 'nearline-rec[plot]'"
    assert isinstance(info.value, ValueError)  # a BadInput: the CLI prints it as one line


def test_require_returns_the_module_when_installed():
    assert require("json", "none", "x") is json
    assert has("json") and not has("no_such_module_here")


def test_a_benchmark_without_matplotlib_fails_before_it_runs(monkeypatch, tmp_path):
    _uninstalled(monkeypatch, "matplotlib")
    ran = []
    monkeypatch.setattr("nearline_rec.tools.bench.store.run", lambda *a, **k: ran.append(a))
    res = CliRunner().invoke(main, ["bench", "store", "--users", "100", "--out", str(tmp_path)])
    assert res.exit_code == 1 and ran == []
    assert res.output.strip() == (
        "error: a benchmark's PNG needs matplotlib: pip install 'nearline-rec[plot]'"
    )


def test_evaluate_report_without_matplotlib_is_the_json_alone(monkeypatch, tmp_path):
    from nearline_rec.tools.quality import evaluate

    monkeypatch.setattr(evaluate, "has", lambda module: module != "matplotlib")
    json_path, png_path = evaluate.write_report({"k": 10, "methods": {}}, tmp_path)
    assert png_path is None and json.loads(json_path.read_text())["k"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["quality.json"]


def test_training_without_scipy_names_the_quality_extra(monkeypatch):
    from nearline_rec.tools.quality.train import _sparse

    _uninstalled(monkeypatch, "scipy")
    with pytest.raises(MissingExtra, match=r"pip install 'nearline-rec\[quality\]'"):
        _sparse()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_tqdm_a_terminal_gets_plain_lines(monkeypatch):
    _uninstalled(monkeypatch, "tqdm")
    out = Terminal()
    with Progress(5, "items", "item", stream=out) as bar:
        bar.update(5)
    assert out.getvalue().startswith("items: 5/5 item (100%)") and "\r" not in out.getvalue()
    monkeypatch.setattr("nearline_rec.progress.on_terminal", lambda stream=None: True)
    assert list(terminal_bar(range(3), "inner")) == [0, 1, 2]
