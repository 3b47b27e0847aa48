"""The run report's sections, in reading order: what the run shows first, the evidence by
stage, then time and lineage at the end. The report is one self-contained HTML file of
tables and base64 PNG plots (no external files or scripts) built from the warehouse
tables and lineage of a run.

Every section reads the tables it needs; a section whose tables are missing says which
asset to materialize instead of showing an empty plot, and is listed as unfilled. A
statistic that cannot be estimated is shown as "not estimable" with its reason, never as a
number.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from big5_dagster.lib.dialogues.schema import FLAG_NAMES
from big5_dagster.lib.personality import correlations as validity
from big5_dagster.lib.personality import human_reference
from big5_dagster.lib.report import figures, ledger, plots
from big5_dagster.lib.report.blocks import ReportData, Section, with_reasons
from big5_dagster.lib.report.figures import PRIMARY_SCORER
from big5_dagster.lib.report.findings import findings_section


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


def _lineage(data: ReportData) -> Section:
    section = Section("lineage", "Lineage: the latest materialization of every asset")
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


def _steering(data: ReportData) -> Section:
    section = Section("steering", "Steering: persona vectors, the layer x coef sweep, monitoring")
    found = section.require(
        data, "persona_vector_norms", "steering_sweep_curve", "projection_correlations"
    )
    if found is None:
        return section
    norms, curve, correlations = found
    section.text(
        "Per trait and layer, two directions: grounded (mean hidden state over the high minus "
        "the low BIG5-CHAT reply of the same train scenarios, no instruction) and prompted "
        "(the same replies under the high minus the low persona instruction). The steered "
        "model gets no instruction; sign x coef x the layer's typical residual norm x the unit "
        "direction is added after the layer."
    )
    section.table(
        norms.pivot_table(index="layer", columns="trait", values="cosine").reset_index(),
        "cosine, grounded vs prompted",
    )
    section.image(
        plots.sweep_curves(curve, "steering sweep", xlabel="coef (x typical residual norm)"),
        "steering sweep curves",
    )
    section.table(curve, "sweep: mean over personas per variant@layer and coef (0: unsteered)")
    section.text(
        "Monitoring: the last prompt token's state at the steering layer projected on each "
        "trait's grounded direction, and its Spearman correlation over a method's replies with "
        "the classifier's P(high) of the reply."
    )
    constant = correlations.spearman_r.isna().map(lambda c: "one side constant" if c else None)
    shown = correlations.assign(
        spearman_r=with_reasons(correlations.spearman_r, constant),
        p_value=with_reasons(correlations.p_value, constant, digits=3),
    )
    section.table(shown, "projection vs expressed trait, per method and trait")
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
    section.image(figures.dialogue_quality_figure(quality), "dialogue target accuracy")
    return section


def _inventory_scores(data: ReportData) -> Section:
    section = Section("inventory_scores", "Inventory scores beside human norms")
    found = section.require(data, "inventory_scores")
    if found is None:
        return section
    (scores,) = found
    section.text(
        "Mean trait score of each trait's high and low persona and of the base model, per "
        "method, with a 95% t-interval over the independent units (column unit): the items "
        "of the trait for log-probability answers (deterministic: one answer per prompt), "
        "the sampled runs for generate-and-parse, the adapter seeds for sft and dpo (two "
        "stages: within seed, then across seeds; one seed gives no interval, drawn without "
        "a bar). Both option orders are averaged within every unit. The grey band is the "
        "human norm (mean ± 1 SD, source in personality_inventory_norms)."
    )
    for (scorer, inventory), png in figures.inventory_score_figures(scores).items():
        section.image(png, f"{inventory} {scorer} scores")
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
                "unit",
                "n_units",
                "mean",
                "ci_low",
                "ci_high",
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
        "Score of the high persona minus the low persona on its own trait: the raw "
        "difference on the inventory's scale with a 95% interval, paired over the units both "
        "personas answered (the same items, runs or adapter seeds). Cohen's d here divides "
        "that difference by the SD across the units (d_scaled_by: decoding noise for runs, "
        "item spread for items, seed spread for seeds), not by a person-level SD: it is not "
        "comparable to a human effect size; read the raw difference. At 135M parameters "
        "little separation is expected; the numbers are shown as measured."
    )
    section.table(
        target[
            [
                "scorer",
                "method",
                "inventory",
                "trait",
                "unit",
                "n_pairs",
                "mean_high",
                "mean_low",
                "difference",
                "diff_ci_low",
                "diff_ci_high",
                "cohens_d",
                "d_scaled_by",
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
        "orders). Where a statistic cannot be estimated (too few respondents answered every "
        "item, or the answers barely vary) it says so and why instead of giving a number; "
        "plots mark it n/e."
    )
    shown = reliability.copy()
    for statistic in ("alpha", "omega"):
        column = f"{statistic}_not_estimable"
        reasons = shown.pop(column) if column in shown else None
        shown[statistic] = with_reasons(shown[statistic], reasons)
    section.table(shown)
    for (scorer, inventory), png in figures.reliability_figures(reliability).items():
        section.image(png, f"alpha {inventory} {scorer}")
    return section


def _correlations(data: ReportData) -> Section:
    section = Section("correlations", "Trait correlations: models beside humans")
    found = section.require(data, "trait_correlations", "trait_correlation_distance")
    if found is None:
        return section
    matrices, distance = found
    source = human_reference.HUMAN_TRAIT_CORRELATIONS_SOURCE.citation
    section.text(
        "Correlations of the five trait scores across the 10 personas (the paper's matrix; "
        f"sft and dpo: the mean over adapter seeds), beside the human reference: {source}. "
        "Distance is the Frobenius norm of the difference. Noise in the persona means "
        "inflates it, so it is shown raw and bias-corrected (the squared distance less its "
        "bootstrap bias), with a basic bootstrap 95% interval of the squared distance over "
        "the independent units (items resampled within trait for all personas at once, runs "
        "within persona, adapter seeds jointly; every resampled unit carries both option "
        "orders). No interval where the units are too few to resample (one run; three seeds)."
    )
    section.table(distance.drop(columns=["reference"], errors="ignore"))
    human = human_reference.human_trait_correlations()
    for (scorer, inventory), png in figures.correlation_figures(matrices, human).items():
        section.image(png, f"correlation heatmaps {inventory} {scorer}")
    return section


def _validity(data: ReportData) -> Section:
    section = Section("validity", "Convergent and discriminant validity (MTMM)")
    found = section.require(data, "mtmm_validity")
    if found is None:
        return section
    (mtmm,) = found
    reference = "; ".join(
        f"{who}: convergent {c:.2f}, discriminant {d:.2f}"
        for who, (c, d) in validity.SERAPIO_GARCIA_MTMM.items()
    )
    section.text(
        "Multitrait-multimethod validity of the two inventories per method and scorer, "
        "across the personas' trait means: the convergent r of each trait (the same trait on "
        "the other inventory) and the mean discriminant correlation over the 20 "
        "heterotrait-heteromethod pairs (mean |r| and mean r), each with a BCa bootstrap 95% "
        "interval over the units. Good validity: high convergent, low discriminant. "
        f"Reference (Serapio-García et al. 2025, IPIP-NEO against BFI): {reference}. "
        f"{validity.SERAPIO_GARCIA_MTMM_SOURCE}."
    )
    summary = mtmm[mtmm.measure != "convergent"]
    convergent = (
        mtmm[mtmm.measure == "convergent"]
        .groupby(["scorer", "method", "inventory_a", "inventory_b"])
        .r.mean()
        .rename("mean_convergent_r")
        .reset_index()
    )
    section.table(convergent, "mean convergent r over the five traits")
    section.table(
        summary.drop(columns=["trait"]), "discriminant: heterotrait-heteromethod correlations"
    )
    section.table(mtmm[mtmm.measure == "convergent"], "convergent r per trait", digits=2)
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
        "High minus low persona per benchmark and trait (95% CI, paired over the items both "
        "personas answered, from the per-sample logs; across adapter seeds for sft and dpo), "
        "and the paper's direction count: on how many benchmarks high C, high A, low E and "
        "low N score better."
    )
    section.table(counts)
    section.image(figures.reasoning_figure(by_trait), "reasoning differences")
    return section


def _parse_failures(data: ReportData) -> Section:
    section = Section("parse_failures", "Answer failures (never imputed)")
    found = section.require(data, "inventory_scores")
    if found is None:
        return section
    (scores,) = found
    rates = (
        scores.groupby(["scorer", "method", "inventory"])
        .agg(
            failed=("n_failed", "sum"),
            low_mass=("n_low_mass", "sum"),
            answered=("n_answered", "sum"),
            scores_missing=("n_below_min_share", "sum"),
        )
        .reset_index()
    )
    rates["failure_rate"] = rates.failed / (rates.failed + rates.answered)
    rates["low_mass_rate"] = rates.low_mass / (rates.failed + rates.answered)
    section.text(
        "Answers that could not be parsed (generate-and-parse) or put less than the minimum "
        "probability on the options (log-probability, low_mass; counted within failed) are "
        "counted here and left out of every score. A trait score with fewer than the "
        "minimum share of its items answered is missing (scores_missing), not prorated."
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


SectionMaker = Callable[[ReportData], Section]

LEAD: tuple[SectionMaker, ...] = (_signal_ledger, findings_section)
"""The sections a reader sees first, in order: where the trait signal lives, stage by stage,
then the run's findings in sentences."""
BODY: tuple[SectionMaker, ...] = (
    _dataset,
    _classifier_and_experts,
    _sweep,
    _dialogue_quality,
    _expressed,
    _steering,
    _self_report,
    _inventory_scores,
    _separation,
    _reliability,
    _correlations,
    _validity,
    _reasoning,
    _parse_failures,
)
CLOSING: tuple[SectionMaker, ...] = (_costs, _lineage)
"""Where the time went and where every number came from, after the results."""
SECTIONS: tuple[SectionMaker, ...] = (*LEAD, *BODY, *CLOSING)
