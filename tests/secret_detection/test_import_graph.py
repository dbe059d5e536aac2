"""secret_detection's modules import one another without a cycle: the tasks import the
services, and the services find the jobs they start by name, never by importing tasks."""

from __future__ import annotations

from tests.support.imports import cycles_described, import_cycles, import_graph


def test_secret_detection_has_no_import_cycle():
    cycles = import_cycles("secret_detection")
    assert cycles == [], f"import cycles in secret_detection:\n{cycles_described(cycles)}"


def test_the_services_do_not_import_the_job_declarations():
    graph = import_graph("secret_detection")
    services = {module for module in graph if module.startswith("secret_detection.services")}
    assert services
    assert {module for module in services if "secret_detection.tasks" in graph[module]} == set()


def test_lazy_imports_inside_functions_count(tmp_path, monkeypatch):
    # a.py imports b at module level; b imports a inside a function: still a cycle.
    package = tmp_path / "cyclic_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic_probe import b\n")
    (package / "b.py").write_text("def later():\n    from . import a\n    return a\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cyclic_probe import d\n"
    )
    (package / "d.py").write_text("import cyclic_probe.c\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert import_cycles("cyclic_probe") == [["cyclic_probe.a", "cyclic_probe.b", "cyclic_probe.a"]]
    # Imports under TYPE_CHECKING never run, so they close no cycle unless asked for.
    assert ["cyclic_probe.c", "cyclic_probe.d", "cyclic_probe.c"] in import_cycles("cyclic_probe", type_checking=True)
