"""`plexbench list datasets|models|tasks|suites`."""

from __future__ import annotations

import importlib

from plexbench.commands import DATA_DIR_HELP
from plexbench.table import format_table

# What to list -> "module:function" returning a list of row dicts. Each area owns its function.
LISTERS = {
    "datasets": "plexbench.data.registry:list_rows",
    "models": "plexbench.models.registry:list_rows",
    "tasks": "plexbench.tasks.registry:list_task_rows",
    "suites": "plexbench.tasks.registry:list_suite_rows",
}


def register(sub) -> None:
    p = sub.add_parser("list", help="list datasets, models, tasks or suites")
    p.add_argument("what", choices=sorted(LISTERS))
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.set_defaults(func=run)


def run(args) -> int:
    module_name, fn_name = LISTERS[args.what].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            print(f"(no {args.what} yet)")
            return 0
        raise
    rows = getattr(module, fn_name)(args)
    print(format_table(rows))
    return 0
