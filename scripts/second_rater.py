"""Re-rate every signal figure of a run with a second, independent trait classifier.

    python scripts/second_rater.py [--data-dir assets_data] [--kind tfidf_char_logistic]

The project's classifier reads word n-grams; the second rater (by default character 2-5
grams, ``tfidf_char_logistic``) is trained on the same posts' train split and shares no
feature with it. Every stored text of the signal chain is read again by it: the expert
gate's completions, the BIG5-CHAT replies (dialogue quality), the DExperts sweep's replies
and every method's expressed replies. Each table is printed with both raters side by side,
computed by the same library functions the assets use. Nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb
import pandas as pd

from big5_dagster import paths
from big5_dagster.lib.dialogues.quality import dialogue_quality_table
from big5_dagster.lib.dialogues.sweep import sweep_curve, sweep_summary
from big5_dagster.lib.experts.classifier import make_classifier
from big5_dagster.lib.experts.classifier_spec import ClassifierSpec
from big5_dagster.lib.experts.quality import gate_levels, gate_table
from big5_dagster.lib.personality.expressed import accuracy_table, rated, separation_table
from big5_dagster.lib.traits import TRAITS

RATERS = ("word", "second")


def read(con: duckdb.DuckDBPyConnection, table: str) -> pd.DataFrame | None:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    ).fetchone()[0]
    return con.execute(f'SELECT * FROM "{table}"').df() if exists else None


def p_high(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[f"p_high_{t}" for t in TRAITS]].set_axis(list(TRAITS), axis=1)


def side_by_side(word: pd.DataFrame, second: pd.DataFrame, keys: list[str], values: list[str]):
    merged = word[keys + values].merge(
        second[keys + values], on=keys, suffixes=("_word", "_second")
    )
    return merged[keys + [f"{v}_{r}" for v in values for r in RATERS]]


def gate(con, rater) -> pd.DataFrame | None:
    completions = read(con, "expert_gate_completions")
    if completions is None:
        return None
    frames = {}
    for name in RATERS:
        rows = []
        for trait, group in completions.groupby("trait"):
            group = group.reset_index(drop=True)
            if name == "word":
                levels = (p_high(group) > 0.5).replace({True: "high", False: "low"})
            else:
                levels = rater.predict_levels(group.text.tolist())
            table = gate_table(levels, group, trait)
            rows.append(gate_levels(table, trait, 0.75, 0.01))
        frames[name] = pd.concat(rows, ignore_index=True)
    return side_by_side(
        frames["word"],
        frames["second"],
        ["trait", "requested_level", "n"],
        ["on_target_accuracy", "binom_p", "off_target_accuracy", "passed"],
    )


def dialogue(con, rater, word_classifier_dataset) -> pd.DataFrame | None:
    dataset = word_classifier_dataset
    if dataset is None:
        return None
    frames = {}
    for name in RATERS:
        if name == "word":
            continue
        probabilities = rater.predict_high_probability(dataset.reply.tolist())
        probabilities.index = dataset.index
        frames[name] = dialogue_quality_table(dataset, probabilities)
    word = read(con, "dialogue_quality")
    return side_by_side(
        word, frames["second"], ["persona", "n_scored"], ["target_accuracy", "target_binom_p"]
    )


def sweep(con, rater) -> pd.DataFrame | None:
    replies = read(con, "dexperts_sweep_replies")
    if replies is None:
        return None
    second = replies.copy()
    probabilities = rater.predict_high_probability(second.reply.tolist())
    for trait in TRAITS:
        second[f"p_high_{trait}"] = probabilities[trait].to_numpy()
    return side_by_side(
        sweep_curve(sweep_summary(replies)),
        sweep_curve(sweep_summary(second)),
        ["formula", "alpha"],
        ["target_accuracy", "min_target_accuracy", "personas_passing"],
    )


def expressed(con, rater) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    replies = read(con, "expressed_replies")
    if replies is None:
        return None
    second = rated(replies, rater.predict_high_probability(replies.reply.tolist()))
    accuracy = side_by_side(
        accuracy_table(replies),
        accuracy_table(second),
        ["method", "adapter_seed", "persona", "n"],
        ["target_accuracy", "binom_p"],
    )
    separation = side_by_side(
        separation_table(replies),
        separation_table(second),
        ["method", "adapter_seed", "trait"],
        ["difference", "diff_ci_low", "diff_ci_high", "spearman_rho"],
    )
    return accuracy, separation


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--kind", default="tfidf_char_logistic")
    args = parser.parse_args()
    root = paths.data_dir(str(args.data_dir) if args.data_dir else None)
    posts_file = root / "psychgenerator_posts" / "all" / "posts.parquet"
    if not posts_file.exists():
        print(f"{posts_file} does not exist: materialize psychgenerator_posts first")
        return 1
    posts = pd.read_parquet(posts_file)
    rater = make_classifier(ClassifierSpec(kind=args.kind)).fit(posts)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    print(f"second rater {args.kind}: held-out accuracy on the posts")
    print(rater.evaluate(posts)[["trait", "accuracy"]].round(3).to_string(index=False))
    dataset_file = root / "big5_chat_dataset" / "all" / "big5_chat.parquet"
    dataset = pd.read_parquet(dataset_file) if dataset_file.exists() else None
    with duckdb.connect(str(paths.warehouse_path(root)), read_only=True) as con:
        for title, table in (
            ("expert gate", gate(con, rater)),
            ("dialogue quality", dialogue(con, rater, dataset)),
            ("DExperts sweep", sweep(con, rater)),
        ):
            print(f"\n== {title}")
            print(
                "(not in this warehouse)"
                if table is None
                else table.round(3).to_string(index=False)
            )
        both = expressed(con, rater)
        print("\n== expressed personality: accuracy")
        print(
            "(not in this warehouse)" if both is None else both[0].round(3).to_string(index=False)
        )
        print("\n== expressed personality: separation")
        print(
            "(not in this warehouse)" if both is None else both[1].round(3).to_string(index=False)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
