"""Import result files written by PsychoBench (Huang et al., ICLR 2024) and score them its way.

Layout (CUHK-ARISE/PsychoBench ``utils.py``: ``generate_testfile``/``generation`` writes the
file, ``example_generator.py`` fills the answer columns, ``convert_data`` reads it back): a
CSV with one row per question and, per question order ("shuffle"), a block of columns:

    Prompt: <prompt>  | order-<i> | shuffle<i>-test0 | shuffle<i>-test1 | ... | Prompt: ... | order-<i+1> | ...
    1. <item text>    | 7         | 4                | 5                | ...
    2. <item text>    | 3         | 2                | 1                | ...

- a block starts at a column whose header starts with "order" (written "order-0",
  "order-1", ... in current PsychoBench, "order-1", ... in early versions); its cells are
  the original question numbers in the order that block presented them;
- the column just before it holds "<position>. <question text>" (header "Prompt: ...";
  pandas renames repeated headers to "Prompt: ....1" when example_generator rewrites the
  file, which is why only the "order" prefix is relied on);
- the answer columns ("shuffle<i>-test<k>", one per test run) run from after the order
  column up to, not including, the column before the next order column (``convert_data``'s
  ``end = order_indices[i+1] - 1``), or to the last column;
- answers are integers (``example_generator.convert_results`` keeps the last character of
  each line); a failed run leaves its cells empty.

Scoring (``utils.convert_data`` + ``compute_statistics``): a reverse item's answer x is
``scale - x``; per run and category the AVG (mean) or SUM of the category's items; then the
mean and the sample standard deviation (``statistics.stdev``, n - 1) of those per-run
scores over all runs. PsychoBench aborts on any non-integer cell; here such an answer is
counted as unparsed and left out instead (see ``score_psychobench``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from big5_dagster.lib.common.hashing import hash_file
from big5_dagster.lib.personality.answer_reading import first_integer
from big5_dagster.lib.personality.inventory import Inventory, InventoryError
from big5_dagster.lib.personality.psychobench import load_psychobench_questionnaire

_POSITION_PREFIX = re.compile(r"^\s*(\d+)\.\s?(.*)$", re.DOTALL)
RESULT_COLUMNS: tuple[str, ...] = (
    "block",
    "order_column",
    "run",
    "line",
    "position",
    "item_number",
    "item_text",
    "raw",
    "answer",
    "parse_status",
)


class PsychoBenchResultsError(ValueError):
    """A PsychoBench result file is malformed; the message names the file, line and column."""


def read_psychobench_results(csv_path: str | Path) -> pd.DataFrame:
    """Read a PsychoBench result CSV into one row per (run, question).

    Columns: block (0-based index of the question order), order_column (its header),
    run (the answer column's header, e.g. 'shuffle0-test1'), line (CSV line number, the
    header being line 1), position (1-based row within the block), item_number (the
    original question number from the order column), item_text (the question text without
    its "N. " prefix), raw (the cell as written), answer (Int64: the cell read with the
    first-integer rule of ``administration.parse_answer``, no range check yet; NA when
    unreadable) and parse_status ('ok', 'empty', 'no_number', 'not_integer').

    Raises PsychoBenchResultsError naming the file, line and column for a missing file, no
    order column, an order column without a question column before it, a row of the wrong
    length, an order cell that is not a question number, or a question number repeated
    within one block.
    """
    path = Path(csv_path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise PsychoBenchResultsError(
            f"{path}: cannot read PsychoBench result file: {err}"
        ) from err
    if not rows:
        raise PsychoBenchResultsError(f"{path}: file is empty")
    header, body = rows[0], rows[1:]
    order_indices = [i for i, name in enumerate(header) if name.startswith("order")]
    if not order_indices:
        raise PsychoBenchResultsError(
            f"{path}: line 1: no column header starts with 'order'; not a PsychoBench result file"
        )
    if order_indices[0] == 0:
        raise PsychoBenchResultsError(
            f"{path}: line 1, column 1 ({header[0]!r}): an order column needs the question "
            "column before it"
        )
    for line_offset, row in enumerate(body):
        if len(row) != len(header):
            raise PsychoBenchResultsError(
                f"{path}: line {line_offset + 2}: {len(row)} fields, the header has {len(header)}"
            )

    blocks = []
    answer_columns: dict[str, int] = {}
    for block, order_index in enumerate(order_indices):
        start = order_index + 1
        end = order_indices[block + 1] - 1 if block + 1 < len(order_indices) else len(header)
        for column in range(start, end):
            if header[column] in answer_columns:
                raise PsychoBenchResultsError(
                    f"{path}: line 1, column {column + 1}: answer column {header[column]!r} "
                    f"repeats column {answer_columns[header[column]] + 1}"
                )
            answer_columns[header[column]] = column
        blocks.append((block, order_index, start, end))

    records: list[dict[str, Any]] = []
    for block, order_index, start, end in blocks:
        order_name = header[order_index]
        seen: dict[int, int] = {}
        items: list[tuple[int, int, int, str]] = []
        for line_offset, row in enumerate(body):
            line = line_offset + 2
            cell = row[order_index].strip()
            try:
                number = int(cell)
            except ValueError:
                raise PsychoBenchResultsError(
                    f"{path}: line {line}, column {order_index + 1} ({order_name!r}): "
                    f"{cell!r} is not a question number"
                ) from None
            if number in seen:
                raise PsychoBenchResultsError(
                    f"{path}: line {line}, column {order_index + 1} ({order_name!r}): question "
                    f"{number} already appears on line {seen[number]} of this block"
                )
            seen[number] = line
            question = row[order_index - 1]
            match = _POSITION_PREFIX.match(question)
            text = match.group(2).strip() if match else question.strip()
            items.append((line, line_offset + 1, number, text))
        for column in range(start, end):
            run = header[column]
            for line, position, number, text in items:
                raw = body[line - 2][column]
                answer, status = first_integer(raw)
                records.append(
                    {
                        "block": block,
                        "order_column": order_name,
                        "run": run,
                        "line": line,
                        "position": position,
                        "item_number": number,
                        "item_text": text,
                        "raw": raw,
                        "answer": answer,
                        "parse_status": status,
                    }
                )
    frame = pd.DataFrame.from_records(records, columns=list(RESULT_COLUMNS))
    return frame.astype({c: _DTYPES[c] for c in RESULT_COLUMNS})


def score_psychobench(
    results: pd.DataFrame, questionnaire: Inventory
) -> dict[str, dict[str, float | int]]:
    """Per category, PsychoBench's statistics over runs, without its abort on bad cells.

    ``results`` comes from ``read_psychobench_results``; ``questionnaire`` from
    ``inventories.load_psychobench_questionnaire`` (its scale_min + scale_max is
    PsychoBench's ``scale``, so reverse-keying scale_min + scale_max - x is its
    ``scale - x``; its compute modes are PsychoBench's AVG/SUM).

    Per run and category: the mean (AVG) or sum (SUM) of the category's keyed answers, as
    PsychoBench computes it. An answer that is unreadable or outside
    scale_min..scale_max is unparsed: it is left out of an AVG mean (the mean of the
    answered items is used), and a SUM run with any unparsed or absent item has no score for
    that category (a partial sum is not on the norm's metric). Then over runs with a score:
    ``mean``, ``sd`` (sample SD, n - 1, as ``statistics.stdev``; NaN with fewer than 2
    runs, where PsychoBench raises), ``n_runs`` (runs with a score), ``n_runs_total``, and
    ``n_unparsed`` (unparsed answers to the category's items over all runs; an item in two
    categories counts in both).

    Raises InventoryError naming the line when a question number is not in the
    questionnaire.
    """
    missing = [
        c for c in ("run", "line", "item_number", "answer", "parse_status") if c not in results
    ]
    if missing:
        raise ValueError(f"results: missing column(s) {missing}; use read_psychobench_results")
    if results.empty:
        raise ValueError("results: no answers (the file has no answer columns)")
    by_number = {item.number: item for item in questionnaire.items}
    unknown = ~results["item_number"].isin(list(by_number))
    if unknown.any():
        row = results[unknown].iloc[0]
        raise InventoryError(
            f"results line {row['line']}: question {row['item_number']} is not in questionnaire "
            f"{questionnaire.name!r}"
        )
    answers = results["answer"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    usable = (
        (results["parse_status"] == "ok").to_numpy()
        & ~np.isnan(answers)
        & (answers >= questionnaire.scale_min)
        & (answers <= questionnaire.scale_max)
    )
    reverse = results["item_number"].map(lambda n: by_number[n].keyed == -1).to_numpy(dtype=bool)
    keyed = np.where(reverse, questionnaire.scale_min + questionnaire.scale_max - answers, answers)
    frame = pd.DataFrame(
        {
            "run": results["run"].to_numpy(),
            "item_id": results["item_number"].map(lambda n: by_number[n].id).to_numpy(),
            "keyed": np.where(usable, keyed, np.nan),
            "unparsed": ~usable,
        }
    )
    runs = pd.Index(frame["run"].drop_duplicates())
    out: dict[str, dict[str, float | int]] = {}
    for category, ids in questionnaire.categories.items():
        in_category = frame[frame["item_id"].isin(ids)]
        per_run = in_category.groupby("run", sort=False)["keyed"].agg(["mean", "sum", "count"])
        per_run = per_run.reindex(runs)
        if questionnaire.compute_mode(category) == "SUM":
            run_scores = per_run["sum"].where(per_run["count"] == len(ids))
        else:
            run_scores = per_run["mean"]
        run_scores = run_scores.dropna().to_numpy(dtype=np.float64)
        n_runs = len(run_scores)
        out[category] = {
            "mean": float(run_scores.mean()) if n_runs else float("nan"),
            "sd": float(run_scores.std(ddof=1)) if n_runs >= 2 else float("nan"),
            "n_runs": n_runs,
            "n_runs_total": len(runs),
            "n_unparsed": int(in_category["unparsed"].sum()),
        }
    return out


SOURCE_COLUMNS: tuple[str, ...] = (
    "source_file",
    "source_version",
    "questionnaire",
    "questionnaire_file",
)
SCORE_COLUMNS: tuple[str, ...] = (
    "category",
    "mean",
    "sd",
    "n_runs",
    "n_runs_total",
    "n_unparsed",
    "source_file",
    "questionnaire",
)


@dataclass(frozen=True)
class PsychoBenchImport:
    """One PsychoBench result file and the questionnaire it answered."""

    results: str
    """The result CSV as PsychoBench writes it."""
    questionnaire: str
    """A PsychoBench questionnaires JSON file."""
    name: str
    """The questionnaire's name in that file."""


def import_results(
    imports: Sequence[PsychoBenchImport],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(answers, scores) of every import: the answers of ``read_psychobench_results`` with
    their source (resolved paths, the result file's content hash, the questionnaire), and
    per file and category the statistics of ``score_psychobench``. No imports: both empty,
    with their columns. A result file named twice is an error naming it."""
    answers, scores = [], []
    seen: dict[str, int] = {}
    for n, entry in enumerate(imports):
        source = str(Path(entry.results).resolve())
        if source in seen:
            raise PsychoBenchResultsError(
                f"imports[{n}]: {source} is already imported by imports[{seen[source]}]"
            )
        seen[source] = n
        questionnaire = load_psychobench_questionnaire(entry.questionnaire, entry.name)
        results = read_psychobench_results(entry.results)
        summary = score_psychobench(results, questionnaire)
        answers.append(
            results.assign(
                source_file=source,
                source_version=hash_file(Path(entry.results)),
                questionnaire=entry.name,
                questionnaire_file=str(Path(entry.questionnaire).resolve()),
            )
        )
        scores.append(
            pd.DataFrame([{"category": c, **stats} for c, stats in summary.items()]).assign(
                source_file=source, questionnaire=entry.name
            )
        )
    if not answers:
        return _empty(RESULT_COLUMNS + SOURCE_COLUMNS), _empty(SCORE_COLUMNS)
    return (
        pd.concat(answers, ignore_index=True),
        pd.concat(scores, ignore_index=True)[list(SCORE_COLUMNS)],
    )


_DTYPES = {
    "block": "int64",
    "order_column": "string",
    "run": "string",
    "line": "int64",
    "position": "int64",
    "item_number": "int64",
    "item_text": "string",
    "raw": "string",
    "answer": "Int64",
    "parse_status": "string",
    "category": "string",
    "mean": "float64",
    "sd": "float64",
    "n_runs": "int64",
    "n_runs_total": "int64",
    "n_unparsed": "int64",
}


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    """No rows, typed columns (so the warehouse tables keep their types)."""
    return pd.DataFrame({c: pd.Series(dtype=_DTYPES.get(c, "string")) for c in columns})
