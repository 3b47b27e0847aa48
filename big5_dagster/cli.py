"""The `big5` command: run the pipeline, trace results, benchmark, import PsychoBench results."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from big5_dagster import paths


def _prepare_dagster_home(root: Path) -> Path:
    """Use DAGSTER_HOME if set, else <data dir>/dagster_home (created with the project's
    dagster.yaml)."""
    from big5_dagster.dagster_home import prepare_dagster_home

    home = prepare_dagster_home(Path(os.environ.get("DAGSTER_HOME") or paths.dagster_home(root)))
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def cmd_demo(args: argparse.Namespace) -> int:
    import dagster as dg

    from big5_dagster.definitions import data_root, defs, settings
    from big5_dagster.runner import materialize_outdated

    home = _prepare_dagster_home(data_root)
    started = time.perf_counter()
    print(f"big5 demo: profile {settings.profile!r}, data in {data_root}")
    with dg.DagsterInstance.get() as instance:
        steps = materialize_outdated(defs, instance, force=args.force)
    if settings.warehouse_writes == "staged":  # this process is the one writer here
        loaded = defs.resources["warehouse"].load_staged()
        print(f"warehouse: {loaded.files_applied} staged files loaded")
    seconds = time.perf_counter() - started
    print(f"\n{len(steps)} materializations in {seconds:.1f} s")
    print(f"results:    {data_root}")
    print(f"warehouse:  {paths.warehouse_path(data_root)}")
    print(f"dagster:    DAGSTER_HOME={home} (run `make ui` to browse the runs and the graph)")
    report = paths.asset_dir(data_root, "big5_report") / "report.html"
    if report.exists():
        print(f"report:     {report}")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from big5_dagster.lib.common.lineage import format_tree, lineage_tree, tree_json

    warehouse = _resources()["warehouse"]
    db = Path(warehouse.path)
    if warehouse.writes == "direct" and not db.exists():
        print(f"no warehouse at {db}: materialize something first (make demo)", file=sys.stderr)
        return 1
    with warehouse.session() as con:  # staged writes: the lineage files, current
        tree = lineage_tree(con, args.asset, args.partition)
    if not tree.found:
        print(
            f"no materialization of {args.asset!r}"
            + (f" partition {args.partition!r}" if args.partition else "")
            + f" is recorded in {db}",
            file=sys.stderr,
        )
        return 1
    if args.format == "json":
        print(json.dumps(tree_json(tree, args.depth), indent=2))
    else:
        print(format_tree(tree, args.depth))
    return 0


def _resources() -> dict:
    """The resources of the active profile, as the pipeline builds them."""
    from big5_dagster.config import active_settings
    from big5_dagster.resources import build_resources

    settings = active_settings()
    return build_resources(settings, paths.data_dir(settings.data_dir))


def _backend():
    """The model backend of the active profile, as the pipeline configures it."""
    return _resources()["model"]


def _print_figures(figures: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures, indent=2, default=str))


def cmd_bench_dexperts(args: argparse.Namespace) -> int:
    from big5_dagster.bench.dexperts import bench_dexperts, dialogue_bench_requests
    from big5_dagster.lib.traits import Persona

    loaded = _backend().load()
    persona = Persona.parse(args.persona)
    requests = dialogue_bench_requests(loaded, args.requests, persona, seed=args.seed)
    figures = bench_dexperts(
        loaded,
        args.adapter,
        requests,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        repeats=args.repeats,
        seed=args.seed,
        log=lambda line: print(f"  {line}", file=sys.stderr),
    )
    plain = figures["plain"]["tokens_per_second"]
    print(
        f"model {figures['model_id']} ({figures['dtype']}, {figures['device']}, "
        f"{figures['torch_threads']} threads), batch {args.batch_size}, "
        f"{args.max_new_tokens} new tokens x {len(requests)} prompts, {args.repeats} repeats"
    )
    print(f"plain generation      {plain:8.1f} tokens/s")
    for formula, row in figures["dexperts"].items():
        print(
            f"dexperts ({formula:8s})  {row['tokens_per_second']:8.1f} tokens/s   "
            f"ratio {row['ratio_to_plain']:.2f}"
        )
    _print_figures(figures, args.json)
    return 0


def cmd_bench_training(args: argparse.Namespace) -> int:
    from big5_dagster.bench.training import bench_training
    from big5_dagster.config import active_settings

    settings = active_settings()
    figures = bench_training(
        settings, paths.data_dir(settings.data_dir), n_examples=args.examples, seed=args.seed
    )
    d, p = figures["dagster"], figures["plain"]
    print(
        f"SFT of {figures['model']} on {figures['examples']} examples ({figures['tokens']} tokens)"
    )
    print("                    train loop tok/s   wall s   wall tok/s")
    print(
        f"through Dagster     {d['train_loop_tokens_per_second']:16.1f} {d['wall_seconds']:8.1f} {d['wall_tokens_per_second']:12.1f}"
    )
    print(
        f"plain TRL script    {p['train_loop_tokens_per_second']:16.1f} {p['wall_seconds']:8.1f} {p['wall_tokens_per_second']:12.1f}"
    )
    print(
        f"ratio (Dagster / plain): train loop {figures['ratio_train_loop']:.2f}, wall {figures['ratio_wall']:.2f}"
    )
    _print_figures(figures, args.json)
    return 0


def cmd_bench_inventory(args: argparse.Namespace) -> int:
    from big5_dagster.bench.inventory import bench_inventory
    from big5_dagster.lib.personality.inventory import load_inventory

    clock, clock_name = _bench_clock(args)
    inventory = load_inventory(args.inventory)
    n_items = args.items or len(inventory.items)
    figures = bench_inventory(
        _backend().load(),
        inventory,
        n_items,
        batch_size=args.batch_size,
        runs=args.runs,
        max_new_tokens=args.max_new_tokens,
        repeats=args.repeats,
        seed=args.seed,
        clock=clock,
        log=lambda line: print(f"  {line}", file=sys.stderr),
    )
    lp, gp, pp = figures["logprob"], figures["generate_and_parse"], figures["paper_protocol"]
    print(
        f"model {figures['model_id']} ({figures['dtype']}, {figures['device']}), clock "
        f"{clock_name}; {inventory.name}: {n_items} items, {args.runs} runs, up to "
        f"{args.max_new_tokens} tokens, batch {args.batch_size}, {args.repeats} repeats"
    )
    print(f"option log-probability             {lp['items_per_second']:8.2f} items/s")
    for label, row in (("generate-and-parse (stop)", gp), ("paper protocol (no stop)", pp)):
        print(
            f"{label:34s} {row['items_per_second']:8.2f} items/s  ({row['mean_new_tokens']:.1f} "
            f"tokens/answer, parse failures {row['parse_failure_rate']:.0%}, "
            f"finish {row['finish_reasons']})"
        )
    print(
        f"against the paper's protocol: log-prob {figures['logprob_to_paper_ratio']:.1f}x, "
        f"generate-and-parse {figures['generate_to_paper_ratio']:.1f}x; answers equal "
        f"{figures['answers_equal']}/{figures['answers']}"
    )
    _print_figures(figures, args.json)
    return 0


def _bench_clock(args: argparse.Namespace):
    """(clock, name): wall time, or with --cpu-time this process's CPU time on one torch
    thread (other processes on the cores then do not count; fractions are unchanged)."""
    import torch

    if getattr(args, "cpu_time", False):
        torch.set_num_threads(1)
        return time.process_time, "cpu (1 thread)"
    return time.perf_counter, f"wall ({torch.get_num_threads()} threads)"


def _add_cpu_time(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time this process's CPU on one torch thread (a shared machine)",
    )


def cmd_bench_all(args: argparse.Namespace) -> int:
    from big5_dagster.bench.hot_paths import bench_all, format_table
    from big5_dagster.bench.roofline import measure_roofline
    from big5_dagster.lib.engine.hardware import cpu_flags, native_bf16

    clock, clock_name = _bench_clock(args)
    say = lambda line: print(f"  {line}", file=sys.stderr)  # noqa: E731
    loaded = _backend().load()
    import torch

    dtypes = [torch.float32] + ([torch.bfloat16] if native_bf16() else [])
    roof = measure_roofline(
        loaded.model.config, dtypes=dtypes, clock=clock, clock_name=clock_name, log=say
    )
    rows = bench_all(loaded, roof, clock, log=say)
    peaks = ", ".join(f"{d} {roof.peak_flops_per_second(d) / 1e9:.1f}" for d in roof.dtypes())
    bf16 = "native bf16 matmul" if native_bf16() else "no native bf16 matmul (bf16 not measured)"
    print(
        f"model {loaded.model_id} ({loaded.dtype}, {loaded.device}), clock {clock_name}; "
        f"peak matmul GFLOP/s: {peaks}; read bandwidth "
        f"{roof.read_bytes_per_second / 1e9:.1f} GB/s; {bf16}"
    )
    print(
        "forward matmul limit (ms):  "
        + "  ".join(
            f"M={r['m']} {r['ms_per_forward']:.0f}"
            for r in roof.forward_table([1, 8, 16, 24, 32, 64, 256])
        )
    )
    print(format_table(rows))
    print(
        "peak, bw: fractions of the peak matmul rate and of the read bandwidth; matmul: the "
        "path's linear layers at this machine's measured rates over its measured time"
    )
    from big5_dagster.config import active_settings
    from big5_dagster.lib.common.files import write_json
    from big5_dagster.lib.common.jsonable import jsonable

    root = paths.data_dir(active_settings().data_dir)
    out = Path(args.out) if args.out else root / "benchmarks" / "bench_all.json"

    figures = {
        "model_id": loaded.model_id,
        "dtype": loaded.dtype,
        "clock": clock_name,
        "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma"))),
        "roofline": roof.as_dict(),
        "paths": rows,
    }
    write_json(jsonable(figures), out)
    print(f"written: {out}")
    return 0


def cmd_bench_dtypes(args: argparse.Namespace) -> int:
    from big5_dagster.bench.dtypes import bench_dtypes
    from big5_dagster.lib.engine.hardware import auto_dtype, native_bf16

    clock, clock_name = _bench_clock(args)
    backend = _backend()
    fp32 = backend.model_copy(update={"dtype": "float32"}).load(cached=False)
    bf16 = backend.model_copy(update={"dtype": "bfloat16"}).load(cached=False)
    rows = bench_dtypes(
        fp32,
        bf16,
        clock,
        batch=args.batch_size,
        new_tokens=args.new_tokens,
        n_items=args.items or None,
        log=lambda line: print(f"  {line}", file=sys.stderr),
    )
    print(
        f"model {fp32.model_id} on {fp32.device}, clock {clock_name}; native bf16: "
        f"{native_bf16()}; dtype auto here: {auto_dtype(fp32.device)}"
    )
    for row in rows:
        agreement = ", ".join(
            f"{k} {v:.3g}" for k, v in row.items() if k not in {"path"} and "seconds" not in k
        )
        print(
            f"{row['path']:44s} fp32 {row['seconds_float32']:7.1f} s  bf16 "
            f"{row['seconds_bfloat16']:7.1f} s  {agreement}"
        )
    _print_figures({"clock": clock_name, "paths": rows}, args.json)
    return 0


def cmd_import_psychobench(args: argparse.Namespace) -> int:
    """Materialize psychobench_results with this file added to the configured imports, then
    print the file's scores."""
    import dagster as dg

    from big5_dagster.config import load_settings
    from big5_dagster.definitions import build_definitions
    from big5_dagster.lib.common.jsonable import jsonable

    settings = load_settings()
    root = paths.data_dir(settings.data_dir)
    source = str(Path(args.results).resolve())
    imports = [
        f.model_dump()
        for f in settings.psychobench.imports
        if str(Path(f.results).resolve()) != source
    ]
    imports.append(
        {"results": args.results, "questionnaire": args.questionnaire, "name": args.name}
    )
    defs = build_definitions(settings, root)
    _prepare_dagster_home(root)
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            [defs.get_assets_def("psychobench_results")],
            instance=instance,
            resources=defs.resources,
            run_config={"ops": {"psychobench_results": {"config": {"imports": imports}}}},
            tags={"big5/command": "import-psychobench"},
            raise_on_error=False,
        )
    if not result.success:
        failure = next(e for e in result.all_events if e.is_step_failure)
        error = failure.step_failure_data.error
        cause = error.cause or error  # the user's error, not Dagster's wrapper
        print(f"import failed: {cause.message.strip()}", file=sys.stderr)
        return 1
    warehouse = defs.resources["warehouse"]
    scores = warehouse.query("SELECT * FROM psychobench_scores WHERE source_file = ?", [source])
    if args.format == "json":
        by_category = scores.drop(columns=["source_file", "questionnaire"]).set_index("category")
        print(json.dumps(jsonable(by_category.to_dict("index")), indent=2, allow_nan=False))
    else:
        print(scores.drop(columns=["source_file"]).to_string(index=False))
    if len(imports) > len(settings.psychobench.imports):
        print(
            f"stored (run {result.run_id[:8]}); add the file to psychobench.imports in your "
            "settings to keep it when psychobench_results is materialized from the UI",
            file=sys.stderr,
        )
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from big5_dagster.config import active_settings

    print(json.dumps(active_settings().model_dump(), indent=2))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("big5-dagster")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="big5", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="materialize every missing or stale asset of the profile")
    demo.add_argument("--force", action="store_true", help="rematerialize everything")
    demo.set_defaults(func=cmd_demo)

    lin = sub.add_parser(
        "lineage",
        help="print the upstream lineage tree of an asset",
        description="The upstream lineage of the latest materialization of ASSET, from the "
        "warehouse's lineage schema. A materialization read along several paths is described "
        "once; later it is one line marked '(repeat, shown above)'.",
    )
    lin.add_argument("asset", help="asset name, e.g. inventory_scores")
    lin.add_argument("--partition", default=None, help="partition key of a partitioned asset")
    lin.add_argument(
        "--depth",
        type=int,
        default=None,
        help="levels of inputs to show (default: all the way to the corpora)",
    )
    lin.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    lin.set_defaults(func=cmd_lineage)

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    bd = bench_sub.add_parser(
        "dexperts", help="tokens/s of plain vs DExperts generation (same prompts and lengths)"
    )
    bd.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch")
    bd.add_argument(
        "--max-new-tokens", type=int, default=48, help="tokens generated per prompt (no early stop)"
    )
    bd.add_argument("--requests", type=int, default=16, help="prompts per timed run")
    bd.add_argument(
        "--repeats", type=int, default=2, help="timed runs of each; tokens/s uses the median"
    )
    bd.add_argument(
        "--persona", default="extraversion_high", help="persona of the replies (trait_level)"
    )
    bd.add_argument(
        "--adapter",
        type=Path,
        default=None,
        help="a LoRA expert folder (default: a random adapter of the same shape)",
    )
    bd.add_argument("--seed", type=int, default=0, help="seed of the prompts and the sampling")
    bd.add_argument("--json", action="store_true", help="also print all figures as JSON")
    bd.set_defaults(func=cmd_bench_dexperts)

    bt = bench_sub.add_parser(
        "training", help="tokens/s of the SFT step through Dagster vs a plain TRL script"
    )
    bt.add_argument(
        "--examples", type=int, default=64, help="SFT examples trained on (from sft_examples)"
    )
    bt.add_argument("--seed", type=int, default=42, help="seed of the sample and the adapter")
    bt.add_argument("--json", action="store_true", help="also print all figures as JSON")
    bt.set_defaults(func=cmd_bench_training)

    ba = bench_sub.add_parser(
        "all", help="every hot path beside this machine's matmul and bandwidth limits"
    )
    _add_cpu_time(ba)
    ba.add_argument("--out", default=None, help="JSON file (default <data dir>/benchmarks/)")
    ba.set_defaults(func=cmd_bench_all)

    bdt = bench_sub.add_parser(
        "dtypes", help="bf16 against fp32 per hot path: speed and agreement of the answers"
    )
    _add_cpu_time(bdt)
    bdt.add_argument("--items", type=int, default=0, help="first N BFI-44 items (0: all)")
    bdt.add_argument("--batch-size", type=int, default=8, help="replies decoded at once")
    bdt.add_argument("--new-tokens", type=int, default=24, help="tokens per greedy reply")
    bdt.add_argument("--json", action="store_true", help="also print all figures as JSON")
    bdt.set_defaults(func=cmd_bench_dtypes)

    bi = bench_sub.add_parser(
        "inventory",
        help="items/s of log-prob scoring and generate-and-parse against the paper's protocol",
    )
    bi.add_argument(
        "--inventory",
        default="bfi44",
        choices=["bfi44", "ipip_neo_120"],
        help="inventory whose items are scored",
    )
    bi.add_argument("--items", type=int, default=16, help="first N items (0: all)")
    bi.add_argument("--batch-size", type=int, default=16, help="prompts per batch")
    bi.add_argument("--runs", type=int, default=5, help="replies per item (the paper: 5)")
    bi.add_argument(
        "--max-new-tokens", type=int, default=128, help="generate-and-parse: token cap per answer"
    )
    bi.add_argument(
        "--repeats", type=int, default=1, help="timed runs of each; items/s uses the median"
    )
    _add_cpu_time(bi)
    bi.add_argument("--seed", type=int, default=0, help="seed of the sampled answers")
    bi.add_argument("--json", action="store_true", help="also print all figures as JSON")
    bi.set_defaults(func=cmd_bench_inventory)

    ipb = sub.add_parser(
        "import-psychobench",
        help="score a PsychoBench result CSV with a PsychoBench questionnaire and store it",
    )
    ipb.add_argument("results", help="a result CSV as PsychoBench writes it")
    ipb.add_argument("--questionnaire", required=True, help="PsychoBench questionnaires JSON")
    ipb.add_argument("--name", required=True, help="the questionnaire's name in that file")
    ipb.add_argument("--format", choices=["json", "table"], default="json", help="output format")
    ipb.set_defaults(func=cmd_import_psychobench)

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
    except BrokenPipeError:
        # The reader stopped early (`big5 settings | head`): end quietly, as Unix tools do.
        # Point stdout at devnull so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
