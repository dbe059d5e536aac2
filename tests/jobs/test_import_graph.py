"""The toolkit's import graph has no cycle, and the apps use only its public face."""

from __future__ import annotations

import project.jobs
from tests.support.imports import cycles_described, import_cycles, imported_modules, package_modules

PUBLIC = "project.jobs"
#: The apps and the shared core outside the toolkit.
CLIENTS = ("exports", "catalog", "secret_detection", "project")


def test_the_toolkit_has_no_import_cycle() -> None:
    cycles = import_cycles("project.jobs")
    assert not cycles, cycles_described(cycles)


def test_apps_import_only_what_the_toolkit_exports() -> None:
    reached_in = []
    for package in CLIENTS:
        for module, path in package_modules(package).items():
            if module.startswith("project.jobs") or ".migrations" in module:
                continue
            for imported in imported_modules(module, path):
                if imported.startswith(f"{PUBLIC}.") and imported.rsplit(".", 1)[-1] not in project.jobs.__all__:
                    reached_in.append(f"{module} imports {imported}")
    assert not reached_in, "\n".join(reached_in)
