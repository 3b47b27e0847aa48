"""The run report: one self-contained HTML file per run, built from the warehouse."""

import json
import shutil

import dagster as dg

from big5_dagster.config import Settings
from big5_dagster.defs.factory import Stage, versioned_asset
from big5_dagster.defs.tracking import Tracker
from big5_dagster.lib.common.files import atomic_file
from big5_dagster.lib.common.hashing import hash_json
from big5_dagster.lib.report import ledger
from big5_dagster.lib.report.page import build_report
from big5_dagster.lib.report.sections import ReportData
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.warehouse import Warehouse

REPORT_TABLES = (
    "big5_chat_dataset",
    "scenario_openers",
    "big5_chat_replies",
    "trait_classifier_evaluation",
    "expert_quality",
    "expert_gate",
    "dexperts_sweep",
    "dexperts_sweep_curve",
    "dialogue_quality",
    "expressed_accuracy",
    "expressed_separation",
    "self_report_vs_behaviour",
    "inventory_scores",
    "inventory_separation",
    "inventory_answers",
    "psychometric_reliability",
    "trait_correlations",
    "trait_correlation_distance",
    "mtmm_validity",
    "reasoning_results",
    "reasoning_by_trait",
    "reasoning_direction_counts",
    "persona_vector_norms",
    "steering_sweep",
    "steering_sweep_curve",
    "projection_correlations",
)
REPORT_FILE = "report.html"


def read_report_data(
    warehouse: Warehouse, store: ArtifactStore, run_id: str, settings: Settings
) -> ReportData:
    """Every table the report reads (those present), lineage without the report's own rows."""
    tables = {
        name: warehouse.query(f'SELECT * FROM "{name}"')
        for name in REPORT_TABLES
        if warehouse.table_exists(name)
    }
    if warehouse.table_exists("materializations", schema="lineage"):
        tables["lineage"] = warehouse.query(
            "SELECT * FROM lineage.materializations WHERE asset <> 'big5_report'"
        )
        tables["lineage_inputs"] = warehouse.query("SELECT * FROM lineage.inputs")
    training_reports = {}
    for asset in ("sft_adapter", "dpo_adapter"):
        path = store.file(asset, "reports.json")
        if path.exists():
            training_reports[asset] = json.loads(path.read_text())
    return ReportData(
        tables=tables,
        training_reports=training_reports,
        run={
            "run id": run_id,
            "profile": settings.profile,
            "base model": settings.model.base_model,
            "data directory": str(store.root_path),
        },
    )


def build(settings: Settings) -> Stage:
    @versioned_asset(
        settings,
        presents=True,
        deps=[
            "big5_chat_dataset",
            "dialogue_quality",
            "trait_classifier",
            "trait_experts",
            "dexperts_sweep",
            "persona_vectors",
            "steering_sweep",
            "persona_projections",
            "expressed_personality",
            "self_report_vs_behaviour",
            "sft_adapter",
            "dpo_adapter",
            "inventory_scores",
            "psychometric_reliability",
            "trait_correlations",
            "reasoning_by_trait",
        ],
        group_name="report",
        kinds={"html"},
    )
    def big5_report(
        context: dg.AssetExecutionContext, store: ArtifactStore, warehouse: Warehouse
    ) -> dg.MaterializeResult:
        """One self-contained HTML report of the run (plots embedded as PNG): dataset and
        flags, classifier and expert quality, inventory scores beside human norms, separation,
        reliability, correlation heatmaps, MTMM validity, reasoning, failure rates, costs per stage,
        lineage."""
        tracker = Tracker(context, warehouse, store)
        data = read_report_data(warehouse, store, context.run.run_id, settings)
        page, sections = build_report(data)
        folder = store.asset_dir("big5_report")
        run_copy = folder / "runs" / f"report-{context.run.run_id}.html"
        run_copy.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(run_copy) as tmp:
            tmp.write_text(page, encoding="utf-8")
        latest = folder / REPORT_FILE
        with atomic_file(latest) as tmp:
            shutil.copyfile(run_copy, tmp)
        signal = ledger.signal_ledger({name: data.table(name) for name in ledger.SOURCES})
        unfilled = [s.title for s in sections if not s.filled]
        if unfilled:
            context.log.warning(f"report sections without data: {', '.join(unfilled)}")
        summary = "\n".join(
            f"- {'✅' if s.filled else '⚠️ missing ' + ', '.join(s.missing)} {s.title}"
            for s in sections
        )
        return tracker.result(
            # The report is a function of its inputs: their data versions identify it.
            data_version=hash_json([list(v.__dict__.values()) for v in tracker.inputs]),
            rows=len(sections),
            artifacts=[latest, run_copy],
            metadata={
                "report": dg.MetadataValue.path(str(latest)),
                "this_run": dg.MetadataValue.path(str(run_copy)),
                "sections": dg.MetadataValue.md(summary),
                "signal_ledger": dg.MetadataValue.md(
                    ledger.ledger_overview(signal).to_markdown(index=False)
                    if len(signal)
                    else "no stage has results yet"
                ),
                "signal_ledger_rows": dg.MetadataValue.md(signal.round(4).to_markdown(index=False)),
                "sections_filled": len(sections) - len(unfilled),
                "sections_missing": len(unfilled),
            },
        )

    return Stage([big5_report])
