"""``continual registry NAME`` (the versions and alias moves of a registered model) and ``continual promote``."""

from __future__ import annotations

import time

from continual.commands.cmdline import subcommand_parser
from continual.tracking.registry import alias_history, promote, versions
from continual.tracking.store import DEFAULT_URI

REGISTRY_USAGE = """usage: continual registry NAME [--tracking-uri URI]

Lists the versions of registered model NAME (made by runs with tracking.register=NAME): when each
was created, its tasks, its ACC without task ids and with them, its routing accuracy, its aliases and
the run it came from; then every alias move. Default store: sqlite:///runs/mlflow.db."""

PROMOTE_USAGE = """usage: continual promote NAME VERSION [--alias champion] [--tracking-uri URI]

Points the alias (default: champion) of registered model NAME at VERSION; rolling back is promoting
an older version. Servers started with models:/NAME@champion pick the version up when they restart.
Each move is recorded (see continual registry NAME)."""


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _tasks_cell(tags: dict[str, str]) -> str:
    names = tags.get("tasks", "")
    return f"{tags.get('num_tasks', '?')}: {names if len(names) <= 60 else names[:57] + '...'}"


def registry_text(name: str, uri: str) -> str:
    """``continual registry NAME``: the versions, then the alias moves."""
    rows = [["version", "created", "ACC", "task-given", "router", "aliases", "run", "tasks"]]
    for v in versions(name, uri):
        rows.append(
            [
                str(v.version),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.created)),
                v.tags.get("avg_acc", ""),
                v.tags.get("oracle_avg_acc", ""),
                v.tags.get("router_acc", ""),
                ",".join(v.aliases) or "-",
                v.run_id[:12],
                _tasks_cell(v.tags),
            ]
        )
    moves = [
        f"{m['at']}  {m['alias']} -> v{m['version']}" + (f" (was v{m['previous']})" if m["previous"] else "")
        for m in alias_history(name, uri)
    ]
    return f"model {name}: {len(rows) - 1} versions\n{_table(rows)}\n\nalias moves:\n" + ("\n".join(moves) or "none")


def main_registry(argv: list[str]) -> None:
    parser = subcommand_parser("registry", REGISTRY_USAGE)
    parser.add_argument("name")
    parser.add_argument("--tracking-uri", default=DEFAULT_URI)
    args = parser.parse_args(argv)
    print(registry_text(args.name, args.tracking_uri))


def main_promote(argv: list[str]) -> None:
    parser = subcommand_parser("promote", PROMOTE_USAGE)
    parser.add_argument("name")
    parser.add_argument("version")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--tracking-uri", default=DEFAULT_URI)
    args = parser.parse_args(argv)
    previous = promote(args.name, args.version, args.alias, args.tracking_uri)
    was = f" (was version {previous})" if previous else ""
    print(f"{args.name}@{args.alias} -> version {int(args.version)}{was}")
