"""The run report's sections: each reads the tables it needs from the warehouse (the report is
one self-contained HTML file of tables and base64 PNG plots, no external
files or scripts) built from the warehouse tables and lineage of a run.

Every section reads the tables it needs; a section whose tables are missing says which
asset to materialize instead of showing an empty plot, and is listed as unfilled.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from big5_dagster.lib.dialogues.schema import FLAG_NAMES
from big5_dagster.lib.personality import human_reference
from big5_dagster.lib.report import ledger, plots
from big5_dagster.lib.traits import TRAITS

PRIMARY_SCORER = "logprob"


@dataclass
class ReportData:
    """What the report is built from: warehouse tables by name (lineage included as
    ``lineage`` and ``lineage_inputs``), training reports per adapter asset, run facts."""

    tables: Mapping[str, pd.DataFrame]
    training_reports: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    run: Mapping[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> pd.DataFrame | None:
        frame = self.tables.get(name)
        return frame if frame is not None and len(frame) else None


@dataclass
class Section:
    key: str
    title: str
    blocks: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def filled(self) -> bool:
        return not self.missing and bool(self.blocks)

    def text(self, paragraph: str) -> None:
        self.blocks.append(f"<p>{html.escape(paragraph)}</p>")

    def table(self, frame: pd.DataFrame, caption: str | None = None, digits: int = 3) -> None:
        numeric = frame.select_dtypes("number").columns
        shown = frame.assign(**{c: frame[c].round(digits) for c in numeric})
        heading = f"<h4>{html.escape(caption)}</h4>" if caption else ""
        body = shown.to_html(index=False, na_rep="–", border=0, classes="data", escape=True)
        self.blocks.append(f'{heading}<div class="scroll">{body}</div>')

    def image(self, png: bytes, alt: str) -> None:
        encoded = base64.b64encode(png).decode("ascii")
        self.blocks.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}"/>')

    def require(self, data: ReportData, *tables: str) -> list[pd.DataFrame] | None:
        """The named tables, or None after noting which are missing."""
        frames = [data.table(t) for t in tables]
        gone = [t for t, f in zip(tables, frames, strict=True) if f is None]
        if gone:
            self.missing.extend(gone)
            self.text(f"Not in this run's warehouse: {', '.join(gone)}. Materialize them first.")
            return None
        return frames


def _signal_ledger(data: ReportData) -> Section:
    section = Section("signal_ledger", "Signal ledger: where the trait signal lives")
    table = ledger.signal_ledger({name: data.table(name) for name in ledger.SOURCES})
    if table.empty:
        section.require(data, *ledger.SOURCES)
        return section
    absent = [name for name in ledger.SOURCES if data.table(name) is None]
    section.text(
        "Stage by stage, per persona: the trait classifier's accuracy at the persona's level "
        "(chance 0.5; exact 95% interval, one-sided binomial p) for the expert gate, the "
        "dialogue data and each method's replies to held-out scenarios; for self-report, the "
        "persona's inventory score on its own trait minus the base model's, positive in the "
        "instructed direction (log-probability scorer). * marks p < 0.05."
        + (f" Not in this run: {', '.join(absent)}." if absent else "")
    )
    section.table(ledger.ledger_overview(table), "overview (value, * significant)")
    section.table(table, "every row")
    return section


def _overview(data: ReportData) -> Section:
    section = Section("overview", "Run and lineage summary")
    found = section.require(data, "lineage")
    if found is None:
        return section
    (lineage,) = found
    facts = {**data.run, "materializations recorded": len(lineage)}
    section.table(pd.DataFrame({"what": list(facts), "value": [str(v) for v in facts.values()]}))
    lineage = lineage.sort_values("ended_at")
    latest = lineage.groupby(["asset", "partition"], dropna=False).tail(1)
    inputs = data.table("lineage_inputs")
    n_inputs = (
        inputs.groupby("materialization_id").size() if inputs is not None else pd.Series(dtype=int)
    )
    latest = latest.assign(inputs=latest.materialization_id.map(n_inputs).fillna(0).astype(int))
    summary = (
        latest.groupby("asset")
        .agg(
            partitions=("partition", lambda p: int(p.notna().sum()) or 1),
            data_version=("data_version", lambda v: v.iloc[-1][:12]),
            code_version=("code_version", lambda v: str(v.iloc[-1])[:12]),
            inputs_read=("inputs", "sum"),
            rows=("row_count", "sum"),
            last_run=("run_id", lambda v: v.iloc[-1][:8]),
            ended_at=("ended_at", "max"),
        )
        .reset_index()
        .sort_values("ended_at")
    )
    section.text(
        "Latest materialization of every asset (data versions are content hashes; "
        "`big5 lineage ASSET` prints the full upstream tree, the same rows answer SQL in "
        "lineage.materializations and lineage.inputs)."
    )
    section.table(summary)
    return section


def _dataset(data: ReportData) -> Section:
    section = Section("dataset", "BIG5-CHAT dataset: size, splits and flags")
    found = section.require(data, "big5_chat_dataset")
    if found is None:
        return section
    (dataset,) = found
    flags = [f for f in FLAG_NAMES if f in dataset]
    counts = (
        dataset.groupby(["persona", "split"]).size().unstack("split", fill_value=0).reset_index()
    )
    rates = dataset.groupby("persona")[flags].mean().reset_index()
    words = dataset.reply.fillna("").str.split().str.len()
    section.text(
        f"{len(dataset)} replies to {dataset.scenario_id.nunique()} scenarios; reply length "
        f"{words.mean():.1f} words on average (median {words.median():.0f}). Flagged replies "
        "are kept and counted, never dropped silently."
    )
    section.table(counts.merge(rates, on="persona"), "replies per split and flag rates")
    long = rates.melt(id_vars="persona", var_name="flag", value_name="rate")
    section.image(
        plots.bar_chart(long, "persona", "rate", "flag", title="flag rate", ylabel="share"),
        "flag rates per persona",
    )
    return section


def _classifier_and_experts(data: ReportData) -> Section:
    section = Section("classifier_experts", "Trait classifier and expert quality")
    found = section.require(data, "trait_classifier_evaluation", "expert_quality")
    if found is None:
        return section
    classifier, experts = found
    section.text("Held-out accuracy of the trait classifier on posts it never saw.")
    section.table(classifier)
    section.image(
        plots.bar_chart(
            classifier.melt(
                id_vars="trait", value_vars=["accuracy", "majority_baseline"], var_name="what"
            ),
            "trait",
            "value",
            "what",
            title="classifier held-out accuracy",
            ylabel="accuracy",
        ),
        "classifier accuracy",
    )
    gate = data.table("expert_gate")
    if gate is None:
        section.require(data, "expert_gate")
        return section
    section.text(
        "Expert quality gate, per requested level: the classifier reads that level in the "
        "experts' completions of held-out prefixes (on-target, one-sided binomial p against "
        "0.5); a trait passes only when both levels pass. Off-target: the share read at the "
        "requested level on the other four traits, beside the same share in real held-out "
        "posts of that level (the corpus's traits correlate as people's do)."
    )
    section.table(gate)
    shown = gate.assign(level=gate.trait + "_" + gate.requested_level).melt(
        id_vars="level",
        value_vars=["on_target_accuracy", "off_target_accuracy", "corpus_off_target_accuracy"],
        var_name="what",
    )
    section.image(
        plots.bar_chart(
            shown,
            "level",
            "value",
            "what",
            title="expert gate",
            ylabel="accuracy",
            reference=0.5,
            reference_label="chance",
        ),
        "expert gate accuracy",
    )
    section.table(experts, "by measured trait and requested level")
    return section


def _sweep(data: ReportData) -> Section:
    section = Section("dexperts_sweep", "DExperts sweep: accuracy and fluency against alpha")
    found = section.require(data, "dexperts_sweep", "dexperts_sweep_curve")
    if found is None:
        return section
    summary, curve = found
    section.text(
        "Every persona's replies to a fixed set of scenarios at each alpha and formula "
        "(alpha 0: plain generation). Accuracy: the classifier reads the persona's level; "
        "drift: mean change of the other traits' P(high) against the plain replies; "
        "perplexity: of the reply under the base model given its role-play prompt."
    )
    section.image(plots.sweep_curves(curve), "sweep curves")
    section.table(curve, "mean over personas")
    section.table(summary, "per persona")
    return section


def _expressed(data: ReportData) -> Section:
    section = Section("expressed", "Expressed personality: what each method writes")
    found = section.require(data, "expressed_accuracy")
    if found is None:
        return section
    (accuracy,) = found
    section.text(
        "Each method replies to held-out evaluation scenarios (never seen in training) under "
        "each persona; the trait classifier reads every reply. Base has no persona: its one "
        "reply set is read against every persona. Accuracy with a one-sided binomial p; "
        "mean P(high) of the target trait with a 95% bootstrap interval over scenarios."
    )
    label = accuracy.method + accuracy.adapter_seed.map(
        lambda s: "" if pd.isna(s) else f" s{int(s)}"
    )
    section.image(
        plots.bar_chart(
            accuracy.assign(condition=label),
            "persona",
            "target_accuracy",
            "condition",
            title="target-trait accuracy of replies",
            ylabel="accuracy",
            reference=0.5,
            reference_label="chance",
        ),
        "expressed accuracy",
    )
    section.table(accuracy, "per method and persona")
    separation = data.table("expressed_separation")
    if separation is not None:
        section.text(
            "Per trait: mean P(high) under the high persona minus under the low one (paired "
            "over scenarios, 95% bootstrap interval) and the Spearman correlation of the "
            "instructed level with the classifier's score (criterion validity, Serapio-Garcia "
            "et al., Nature Machine Intelligence 2025)."
        )
        section.table(separation, "high-low separation and criterion validity")
    return section


def _self_report(data: ReportData) -> Section:
    section = Section("self_report", "Self-report against behaviour")
    found = section.require(data, "self_report_vs_behaviour")
    if found is None:
        return section
    (table,) = found
    writes = table[table.verdict == "writes it, does not report it"]
    reports = table[table.verdict == "reports it, does not write it"]
    section.text(
        "Per method and trait: the inventory's high-low separation beside the expressed one. "
        "A separation shows when its 95% interval excludes 0. "
        f"{len(writes)} of {len(table)} rows change how the model writes but not what it "
        f"reports; {len(reports)} change what it reports but not how it writes."
    )
    primary = table[table.scorer == PRIMARY_SCORER]
    if len(primary):
        long = primary.melt(
            id_vars=["method", "trait", "inventory"],
            value_vars=["self_report_difference", "expressed_difference"],
            var_name="measure",
        )
        long["label"] = long.method + " · " + long.inventory
        for measure, rows in long.groupby("measure"):
            section.image(
                plots.bar_chart(
                    rows,
                    "trait",
                    "value",
                    "label",
                    title=f"{measure.replace('_', ' ')} ({PRIMARY_SCORER})",
                    ylabel="high − low",
                    reference=0.0,
                ),
                measure,
            )
    section.table(table)
    return section


def _dialogue_quality(data: ReportData) -> Section:
    section = Section("dialogue_quality", "Dialogue quality: is the trait in the replies?")
    found = section.require(data, "dialogue_quality")
    if found is None:
        return section
    (quality,) = found
    above = int((quality.target_accuracy > 0.5).sum())
    section.text(
        f"Classifier accuracy of the target trait level per persona: {above} of "
        f"{len(quality)} personas above chance (0.5)."
    )
    section.table(quality)
    section.image(
        plots.bar_chart(
            quality,
            "persona",
            "target_accuracy",
            title="target-trait accuracy of replies",
            ylabel="accuracy",
            reference=0.5,
            reference_label="chance",
        ),
        "dialogue target accuracy",
    )
    return section


def _inventory_scores(data: ReportData) -> Section:
    section = Section("inventory_scores", "Inventory scores beside human norms")
    found = section.require(data, "inventory_scores")
    if found is None:
        return section
    (scores,) = found
    section.text(
        "Mean trait score (95% CI over runs, option orders and adapter seeds) of each "
        "trait's high and low persona and of the base model, per method; the grey band is "
        "the human norm (mean ± 1 SD, source in personality_inventory_norms)."
    )
    for (scorer, inventory), rows in scores.groupby(["scorer", "inventory"]):
        section.image(
            plots.scores_beside_norms(rows, f"{inventory}, scorer {scorer}"),
            f"{inventory} {scorer} scores",
        )
    on_target = scores[
        (scores.persona == "none") | scores.apply(lambda r: r.persona.startswith(r.trait), axis=1)
    ]
    section.table(
        on_target[
            [
                "scorer",
                "method",
                "inventory",
                "persona",
                "trait",
                "mean",
                "ci_low",
                "ci_high",
                "n",
                "human_mean",
                "human_sd",
            ]
        ],
        "scores of each persona on its own trait",
        digits=2,
    )
    return section


def _separation(data: ReportData) -> Section:
    section = Section("separation", "High-low separation and off-target drift")
    found = section.require(data, "inventory_separation")
    if found is None:
        return section
    (separation,) = found
    target = separation[separation.is_target]
    drift = (
        separation[~separation.is_target]
        .assign(abs_difference=lambda f: f.difference.abs())
        .groupby(["scorer", "method", "inventory"])
        .abs_difference.mean()
        .rename("mean_abs_off_target_drift")
        .reset_index()
    )
    section.text(
        "Score of the high persona minus the low persona on its own trait (Cohen's d uses "
        "the pooled SD). At 135M parameters little separation is expected; the numbers are "
        "shown as measured."
    )
    section.table(
        target[
            [
                "scorer",
                "method",
                "inventory",
                "trait",
                "mean_high",
                "mean_low",
                "difference",
                "cohens_d",
            ]
        ]
    )
    primary = target[target.scorer == PRIMARY_SCORER]
    if len(primary):
        for inventory, rows in primary.groupby("inventory"):
            section.image(
                plots.bar_chart(
                    rows,
                    "trait",
                    "difference",
                    "method",
                    ylabel="high − low",
                    title=f"high-low separation, {inventory} ({PRIMARY_SCORER})",
                    reference=0.0,
                ),
                f"separation {inventory}",
            )
    section.table(drift, "off-target drift: mean |high − low| on the other four traits")
    return section


def _reliability(data: ReportData) -> Section:
    section = Section("reliability", "Reliability: Cronbach's alpha and McDonald's omega")
    found = section.require(data, "psychometric_reliability")
    if found is None:
        return section
    (reliability,) = found
    section.text(
        "Per trait and condition over the condition's respondents (personas × runs × option "
        "orders); human samples typically reach alpha 0.75-0.90 on these scales."
    )
    section.table(reliability)
    for (scorer, inventory), rows in reliability.groupby(["scorer", "inventory"]):
        section.image(
            plots.bar_chart(
                rows,
                "trait",
                "alpha",
                "method",
                ylabel="alpha",
                title=f"Cronbach's alpha, {inventory} ({scorer})",
            ),
            f"alpha {inventory} {scorer}",
        )
    return section


def _correlations(data: ReportData) -> Section:
    section = Section("correlations", "Trait correlations: models beside humans")
    found = section.require(data, "trait_correlations", "trait_correlation_distance")
    if found is None:
        return section
    matrices, distance = found
    source = human_reference.HUMAN_TRAIT_CORRELATIONS_SOURCE.citation
    section.text(
        "Correlations of the five trait scores across the 10 personas (the paper's matrix), "
        f"beside the human reference: {source}. Distance is the Frobenius norm of the "
        "difference with a bootstrap 95% CI."
    )
    section.table(distance.drop(columns=["reference"], errors="ignore"))
    human = human_reference.human_trait_correlations()
    for (scorer, inventory), rows in matrices.groupby(["scorer", "inventory"]):
        shown = {"human": human}
        for method, part in rows.groupby("method"):
            first_seed = part[part.adapter_seed == part.adapter_seed.min()]
            wide = first_seed.pivot(index="trait_a", columns="trait_b", values="r")
            shown[method] = wide.reindex(index=list(TRAITS), columns=list(TRAITS))
        section.image(
            plots.heatmaps(shown, f"{inventory}, scorer {scorer}"),
            f"correlation heatmaps {inventory} {scorer}",
        )
    convergent = data.table("convergent_validity")
    if convergent is not None:
        section.table(convergent, "BFI-IPIP convergent correlation of each trait")
    return section


def _reasoning(data: ReportData) -> Section:
    section = Section("reasoning", "Reasoning benchmarks by trait")
    found = section.require(
        data, "reasoning_results", "reasoning_by_trait", "reasoning_direction_counts"
    )
    if found is None:
        return section
    results, by_trait, counts = found
    primary = results[results.primary.astype(bool)]
    overview = (
        primary.groupby(["method", "task", "metric", "filter"])
        .agg(mean=("value", "mean"), conditions=("value", "size"))
        .reset_index()
    )
    section.text("lm-evaluation-harness scores averaged over the conditions of each method.")
    section.table(overview)
    section.text(
        "High minus low persona per benchmark and trait (95% CI), and the paper's direction "
        "count: on how many benchmarks high C, high A, low E and low N score better."
    )
    section.table(counts)
    shown = by_trait.assign(label=by_trait.method + " · " + by_trait.task + " · " + by_trait.trait)
    section.image(
        plots.differences_with_ci(shown, "label", "reasoning: high − low"),
        "reasoning differences",
    )
    return section


def _parse_failures(data: ReportData) -> Section:
    section = Section("parse_failures", "Answer failures (never imputed)")
    found = section.require(data, "inventory_scores")
    if found is None:
        return section
    (scores,) = found
    rates = (
        scores.groupby(["scorer", "method", "inventory"])
        .agg(failed=("n_failed", "sum"), answered=("n_answered", "sum"))
        .reset_index()
    )
    rates["failure_rate"] = rates.failed / (rates.failed + rates.answered)
    section.text(
        "Answers that could not be parsed (generate-and-parse) or carried no option "
        "(log-probability) are counted here and left out of every score."
    )
    section.table(rates)
    rates["condition"] = rates.method + " · " + rates.inventory
    section.image(
        plots.bar_chart(
            rates,
            "condition",
            "failure_rate",
            "scorer",
            title="failure rate",
            ylabel="share of answers",
        ),
        "failure rates",
    )
    return section


def stage_costs(data: ReportData) -> pd.DataFrame:
    """Seconds (latest materialization of every partition) and tokens per asset."""
    lineage = data.table("lineage")
    if lineage is None:
        return pd.DataFrame()
    latest = lineage.sort_values("ended_at").groupby(["asset", "partition"], dropna=False).tail(1)
    seconds = (latest.ended_at - latest.started_at).dt.total_seconds()
    costs = (
        latest.assign(seconds=seconds)
        .groupby("asset")
        .agg(partitions=("asset", "size"), seconds=("seconds", "sum"))
        .reset_index()
    )
    tokens: dict[str, float] = {}
    for asset in ("scenario_openers", "big5_chat_replies"):
        table = data.table(asset)
        if table is not None and "n_new_tokens" in table:
            tokens[asset] = float(table.n_new_tokens.sum())
    for asset, reports in data.training_reports.items():
        tokens[asset] = float(sum(r.get("train_tokens", 0) for r in reports))
    costs["tokens"] = costs.asset.map(tokens)
    costs["tokens_per_second"] = costs.tokens / costs.seconds
    answers = data.table("inventory_answers")
    if answers is not None:
        costs.loc[costs.asset == "inventory_responses", "model_answers"] = len(answers)
    return costs.sort_values("seconds", ascending=False)


def _costs(data: ReportData) -> Section:
    section = Section("costs", "Time and tokens per stage")
    costs = stage_costs(data)
    if not len(costs):
        section.require(data, "lineage")
        return section
    section.text(
        f"{costs.seconds.sum() / 60:.1f} minutes over the latest materialization of every "
        "asset and partition; tokens are generated tokens (openers, replies) and training "
        "tokens (adapters)."
    )
    section.table(costs, digits=1)
    section.image(
        plots.bar_chart(
            costs.head(15), "asset", "seconds", title="seconds per asset", ylabel="seconds"
        ),
        "seconds per asset",
    )
    return section


SECTIONS: tuple[Callable[[ReportData], Section], ...] = (
    _signal_ledger,
    _overview,
    _dataset,
    _classifier_and_experts,
    _sweep,
    _dialogue_quality,
    _expressed,
    _self_report,
    _inventory_scores,
    _separation,
    _reliability,
    _correlations,
    _reasoning,
    _parse_failures,
    _costs,
)
