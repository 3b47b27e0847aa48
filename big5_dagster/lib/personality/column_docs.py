"""What the columns of the evaluation's warehouse tables mean: (type, description) per column,
shown as the tables' column schemas in the Dagster UI."""

from __future__ import annotations

ColumnDocs = dict[str, tuple[str, str]]

_CONDITION: ColumnDocs = {
    "scorer": ("string", "logprob (option log-probabilities) or generate (generate-and-parse)"),
    "method": ("string", "base, prompt_description, prompt_demonstrations, sft or dpo"),
    "inventory": ("string", "the inventory answered"),
}

_UNIT = (
    "string",
    "the independent unit every interval is over: item (deterministic scorer), run (sampling "
    "scorer) or adapter_seed (sft, dpo: two stages, within seed then across seeds)",
)

INVENTORY_SCORES: ColumnDocs = {
    **_CONDITION,
    "persona": ("string", "'<trait>_<level>', or 'none' for the base model"),
    "trait": ("string", "the trait scored"),
    "unit": _UNIT,
    "n_units": ("int", "units with a value (the n of the interval)"),
    "mean": ("float", "trait mean on the inventory's scale: the mean of the units"),
    "sd": ("float", "SD of the unit values"),
    "se": ("float", "sd / sqrt(n_units)"),
    "df": ("float", "n_units - 1"),
    "ci_low": ("float", "95% t-interval over the units, low end (NaN with fewer than 2 units)"),
    "ci_high": ("float", "95% t-interval over the units, high end"),
    "n_respondents": ("int", "respondents (run x option order x adapter seed)"),
    "n_scored": ("int", "respondents with a trait score"),
    "n_below_min_share": (
        "int",
        "respondents whose score is missing: fewer than min_answered_share of the items answered",
    ),
    "n_answered": ("int", "answers used"),
    "n_failed": ("int", "answers asked but not usable (parse failures and low-mass answers)"),
    "n_low_mass": ("int", "of n_failed: log-probability answers below min_option_mass"),
    "parse_failure_rate": ("float", "(n_failed - n_low_mass) / answers given"),
    "low_mass_rate": ("float", "n_low_mass / answers given"),
    "human_mean": ("float", "human norm (personality_inventory_norms, with its source)"),
    "human_sd": ("float", "human norm SD"),
}

INVENTORY_SEPARATION: ColumnDocs = {
    **_CONDITION,
    "target_trait": ("string", "the trait whose high and low personas are compared"),
    "trait": ("string", "the trait measured (== target_trait: target; else off-target drift)"),
    "is_target": ("bool", "trait == target_trait"),
    "unit": _UNIT,
    "n_pairs": ("int", "units answered under both personas (paired by item, run or seed)"),
    "mean_high": ("float", "mean over the paired units, high persona"),
    "mean_low": ("float", "mean over the paired units, low persona"),
    "difference": ("float", "high minus low on the inventory's scale (the raw difference)"),
    "diff_ci_low": ("float", "95% paired t-interval of the difference, low end"),
    "diff_ci_high": ("float", "95% paired t-interval of the difference, high end"),
    "sd_pooled": ("float", "sqrt of the mean of the two personas' unit variances"),
    "cohens_d": (
        "float",
        "difference / sd_pooled: scaled by the SD across the units (decoding noise for runs, "
        "item spread for items, seed spread for seeds), NOT a person-level SD, so not "
        "comparable to human effect sizes; read the raw difference beside it",
    ),
    "d_scaled_by": ("string", "what the SD dividing cohens_d is"),
    "d_ci_low": ("float", "the difference's interval divided by sd_pooled, low end"),
    "d_ci_high": ("float", "the difference's interval divided by sd_pooled, high end"),
}

TRAIT_CORRELATION_DISTANCE: ColumnDocs = {
    **_CONDITION,
    "frobenius": ("float", "Frobenius distance of the persona correlation matrix to the human one"),
    "frobenius_bias_corrected": (
        "float",
        "sqrt(max(0, 2 D^2 - mean replicate D^2)): the distance less the noise's share",
    ),
    "ci_low": ("float", "basic bootstrap 95% interval of D^2, floored at 0, square-rooted"),
    "ci_high": ("float", "high end of that interval"),
    "unit": _UNIT,
    "n_units": ("int", "units resampled"),
    "n_boot": ("int", "bootstrap replicates"),
    "n_valid": ("int", "replicates with a defined distance"),
    "n_complete_personas": ("int", "personas with all five trait means"),
    "reference": ("string", "citation of the human matrix"),
}

MTMM_VALIDITY: ColumnDocs = {
    "scorer": _CONDITION["scorer"],
    "method": _CONDITION["method"],
    "inventory_a": ("string", "first inventory"),
    "inventory_b": ("string", "second inventory"),
    "measure": (
        "string",
        "convergent (same trait on both inventories), discriminant_mean_abs (mean |r| of the "
        "20 heterotrait-heteromethod pairs), discriminant_mean (their mean r)",
    ),
    "trait": ("string", "the trait of a convergent row"),
    "r": ("float", "Pearson r across personas of the persona trait means"),
    "ci_low": ("float", "BCa bootstrap 95% interval over the units, low end"),
    "ci_high": ("float", "high end"),
    "unit": _UNIT,
    "n_units": ("int", "units resampled (both inventories)"),
    "n_personas": ("int", "personas with all five trait means on both inventories"),
    "n_boot": ("int", "bootstrap replicates"),
}
