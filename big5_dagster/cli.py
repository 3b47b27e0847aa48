"""The `big5` command: demo, lineage, settings."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from big5_dagster import paths


def _prepare_dagster_home(root: Path) -> Path:
    """Use DAGSTER_HOME if set, else <data dir>/dagster_home (created with a dagster.yaml)."""
    home = Path(os.environ.get("DAGSTER_HOME") or paths.dagster_home(root))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def cmd_demo(args: argparse.Namespace) -> int:
    import dagster as dg

    from big5_dagster.config import active_settings
    from big5_dagster.definitions import defs, warehouse_file
    from big5_dagster.runner import materialize_outdated

    settings = active_settings()
    root = paths.data_dir(settings.data_dir)
    home = _prepare_dagster_home(root)
    started = time.perf_counter()
    print(f"big5 demo: profile {settings.profile!r}, data in {root}")
    with dg.DagsterInstance.get() as instance:
        steps = materialize_outdated(defs, instance, force=args.force)
    seconds = time.perf_counter() - started
    print(f"\n{len(steps)} materializations in {seconds:.1f} s")
    print(f"results:    {root}")
    print(f"warehouse:  {warehouse_file}")
    print(f"dagster:    DAGSTER_HOME={home} (run `make ui` to browse the runs and the graph)")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from big5_dagster.config import active_settings
    from big5_dagster.lib.lineage import format_tree, lineage_tree
    from big5_dagster.resources.warehouse import Warehouse

    root = paths.data_dir(active_settings().data_dir)
    db = paths.warehouse_path(root)
    if not db.exists():
        print(f"no warehouse at {db}: materialize something first (make demo)", file=sys.stderr)
        return 1
    with Warehouse(path=str(db)).connect() as con:
        tree = lineage_tree(con, args.asset, args.partition)
    if not tree.found:
        print(
            f"no materialization of {args.asset!r}"
            + (f" partition {args.partition!r}" if args.partition else "")
            + f" is recorded in {db}",
            file=sys.stderr,
        )
        return 1
    print(format_tree(tree))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from big5_dagster.config import active_settings

    print(json.dumps(active_settings().model_dump(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="big5", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="materialize every missing or stale asset of the profile")
    demo.add_argument("--force", action="store_true", help="rematerialize everything")
    demo.set_defaults(func=cmd_demo)

    lin = sub.add_parser("lineage", help="print the upstream lineage tree of an asset")
    lin.add_argument("asset")
    lin.add_argument("--partition", default=None)
    lin.set_defaults(func=cmd_lineage)

    st = sub.add_parser("settings", help="print the effective settings of the active profile")
    st.set_defaults(func=cmd_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    from big5_dagster.config import SettingsError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as e:
        print(str(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
