"""PsychoBench results imported into the warehouse, as an asset with lineage."""

import dagster as dg

from big5_dagster.config import PsychoBenchSettings, Settings, with_defaults
from big5_dagster.defs import specs
from big5_dagster.defs.factory import Stage, versioned_asset
from big5_dagster.defs.sql_models import WAREHOUSE_TABLES
from big5_dagster.defs.tracking import Tracker
from big5_dagster.lib.personality.psychobench_results import import_results
from big5_dagster.resources.artifacts import ArtifactStore
from big5_dagster.resources.warehouse import Warehouse

ANSWERS_TABLE = "psychobench_answers"
SCORES_TABLE = "psychobench_scores"


def build(settings: Settings) -> Stage:
    PsychoBenchConfig = with_defaults(PsychoBenchSettings, settings.psychobench)

    @versioned_asset(
        settings,
        group_name="evaluation",
        kinds={"csv", "duckdb"},
        metadata={WAREHOUSE_TABLES: [ANSWERS_TABLE, SCORES_TABLE]},
        pool="warehouse",
    )
    def psychobench_results(
        context: dg.AssetExecutionContext,
        config: PsychoBenchConfig,  # type: ignore[valid-type]
        store: ArtifactStore,
        warehouse: Warehouse,
    ) -> dg.MaterializeResult:
        """PsychoBench result files (Huang et al., ICLR 2024), configured in
        psychobench.imports, scored its way per category (mean and SD over runs; unreadable
        answers counted and left out): one row per answer with its source file and content
        hash, one row per file and category. `big5 import-psychobench` materializes it."""
        tracker = Tracker(context, warehouse, store)
        imports = specs.psychobench_imports(config)
        answers, scores = import_results(imports)
        if not imports:
            context.log.info("no PsychoBench files configured (psychobench.imports is empty)")
        path = tracker.save_table(answers, "answers.parquet", table=ANSWERS_TABLE)
        tracker.save_table(scores, "scores.parquet", table=SCORES_TABLE, versioned=False)
        return tracker.result(
            rows=len(answers),
            artifacts=[path],
            metadata={
                "files": dg.MetadataValue.md(
                    "\n".join(f"- `{f.results}` ({f.name}, `{f.questionnaire}`)" for f in imports)
                    or "none configured"
                ),
                "scores": dg.MetadataValue.md(
                    scores.drop(columns=["source_file"]).round(3).to_markdown(index=False)
                    if len(scores)
                    else "no scores"
                ),
                "unparsed_answers": int((answers.parse_status != "ok").sum()),
            },
        )

    return Stage([psychobench_results])
