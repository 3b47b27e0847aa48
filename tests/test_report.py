"""The run report reads as findings first, evidence next, lineage last; statistics that cannot
be estimated say so; plots keep their legends off the data and show in the Dagster UI."""

import base64
import html
import re

import numpy as np
import pandas as pd
import pytest
import report_fixtures
from matplotlib.transforms import Bbox

from big5_dagster.lib.personality import reliability
from big5_dagster.lib.personality.inventory import load_inventory
from big5_dagster.lib.report import figures, plots, sections
from big5_dagster.lib.report.page import build_report
from big5_dagster.lib.report.sections import ReportData


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', page)


def section_text(page: str, key: str) -> str:
    body = re.search(rf'<section id="{key}".*?</section>', page, re.S).group(0)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


@pytest.fixture(scope="module")
def built() -> tuple[str, list[sections.Section]]:
    """The report of the synthetic run (about 20 plots: built once)."""
    return build_report(report_fixtures.report_data())


def test_the_report_opens_with_findings_and_ends_with_time_and_lineage(built):
    page, made = built
    ids = section_ids(page)
    assert [m(ReportData({})).key for m in sections.LEAD] == ids[:2]
    assert ids[:2] == ["signal_ledger", "findings"]
    assert re.search(r'<section id="signal_ledger" class="lead">', page)
    assert re.search(r'<section id="findings" class="lead">', page)
    assert ids[-2:] == ["costs", "lineage"]
    assert [s.key for s in made] == ids and all(s.filled for s in made)


def test_findings_are_computed_from_the_run_tables(built):
    data = report_fixtures.report_data()
    text = " ".join(section_text(built[0], "findings").split())
    assert f"replies of {report_fixtures.ABOVE_CHANCE} of 10 personas above chance" in text
    assert "prompt_description: the high persona scores above the low one on 7 of 10" in text
    assert "its 95% interval is above 0 on 3 of them" in text
    assert "sft: no high-low difference distinguishable from 0" in text
    assert "closest to the human matrix under prompt_description" in text
    assert (
        "Not evaluated in this run: prompt_demonstrations, dpo, steering_grounded, "
        "steering_prompted." in text
    )
    assert "sft and dpo were trained with one seed" in text
    assert "Cronbach's alpha is not estimable for 30 of 60" in text

    # Other figures, other sentences: nothing in the summary is fixed text.
    quality = data.tables["dialogue_quality"].assign(target_accuracy=0.9, target_binom_p=0.001)
    changed = ReportData(
        {**data.tables, "dialogue_quality": quality},
        {"sft_adapter": [{}, {}], "dpo_adapter": [{}, {}]},
        data.run,
    )
    findings = sections.LEAD[1](changed)
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", "".join(findings.blocks))).split())
    assert "replies of 10 of 10 personas above chance" in text
    assert "do not carry their trait level" not in text
    assert "trained with one seed" not in text


def test_findings_without_results_say_what_is_missing():
    page, made = build_report(ReportData({}))
    findings = made[1]
    assert findings.key == "findings" and not findings.filled
    text = section_text(page, "findings")
    assert "No results to summarize yet" in text
    assert "dialogue_quality" in text and "inventory_separation" in text


def test_a_statistic_that_cannot_be_estimated_shows_the_reason_not_a_number(built):
    text = " ".join(section_text(built[0], "reliability").split())
    assert f"not estimable ({report_fixtures.BARELY_VARYING})" in text
    assert "not estimable (1 respondent(s) answered every item; at least 3 needed)" in text
    assert "0.60" in text  # estimable alphas still show as numbers

    shown = sections.with_reasons(
        pd.Series([0.71234, np.nan, -4963.9]), pd.Series([None, None, "answers barely vary"])
    )
    assert shown.tolist() == ["0.71", "not estimable", "not estimable (answers barely vary)"]


def _answers(values: np.ndarray, inventory) -> pd.DataFrame:
    """Respondents x items of the inventory's first trait as answer rows."""
    trait = next(iter(inventory.categories))
    items = inventory.categories[trait]
    rows = [
        {"method": "m", "persona": f"p{r}", "item_id": item, "value": float(values[r, j])}
        for r in range(values.shape[0])
        for j, item in enumerate(items)
    ]
    return pd.DataFrame(rows), trait


def test_alpha_of_answers_that_barely_vary_is_not_estimable():
    bfi = load_inventory("bfi44")
    trait = next(iter(bfi.categories))
    k = len(bfi.categories[trait])
    rng = np.random.default_rng(1)
    # As a random-weight model's expected scores: differences of 0.005 scale points, whose
    # raw alpha is a ratio of near-zero variances (here far below -1).
    tiny = 3.0 + 0.005 * rng.standard_normal((12, k))
    tiny[:, 1] = 6.0 - tiny[:, 0]  # makes the sum score nearly constant
    answers, trait = _answers(tiny, bfi)
    row = reliability.reliability_table(answers, bfi, by=(), respondent_columns=("persona",))
    row = row.set_index("trait").loc[trait]
    assert np.isnan(row.alpha) and np.isnan(row.omega)
    assert row.alpha_not_estimable.startswith("answers barely vary: median item SD 0.00")

    spread = np.clip(np.round(3 + rng.standard_normal((12, 1)) + rng.normal(0, 0.5, (12, k))), 1, 5)
    answers, _ = _answers(spread, bfi)
    row = reliability.reliability_table(answers, bfi, by=(), respondent_columns=("persona",))
    row = row.set_index("trait").loc[trait]
    matrix = reliability.item_matrix(answers, bfi, trait, respondent_columns=("persona",))
    assert row.alpha == pytest.approx(reliability.cronbach_alpha(matrix))
    assert pd.isna(row.alpha_not_estimable)

    answers, _ = _answers(spread[:2], bfi)
    row = reliability.reliability_table(answers, bfi, by=(), respondent_columns=("persona",))
    assert row.set_index("trait").loc[trait].alpha_not_estimable == (
        "2 respondent(s) answered every item; at least 3 needed"
    )


@pytest.fixture
def drawn(monkeypatch):
    """What plots draws, seen just before each figure becomes PNG bytes: per figure, its
    axes with their titles and texts, and per legend (its box, its axes' box)."""
    captured = []
    real = plots.png_bytes

    def capture(fig, dpi=plots.DPI):
        renderer = fig.canvas.get_renderer()
        legends = [
            (ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer))
            for ax in fig.axes
            if ax.get_legend() is not None
        ]
        texts = [[t.get_text() for t in ax.texts] for ax in fig.axes]
        titles = [ax.get_title() for ax in fig.axes]
        captured.append({"legends": legends, "texts": texts, "titles": titles})
        return real(fig, dpi)

    monkeypatch.setattr(plots, "png_bytes", capture)
    return captured


def _overlaps(a: Bbox, b: Bbox) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_legends_sit_beside_the_data_not_on_it(drawn):
    data = report_fixtures.report_data()
    figures.dialogue_quality_figure(data.tables["dialogue_quality"])
    figures.reliability_figures(data.tables["psychometric_reliability"])
    figures.inventory_score_figures(data.tables["inventory_scores"])
    figures.loss_figure({"seed 1": {"loss_curve": [(1, 2.0)]}, "seed 2": {"loss_curve": []}}, "x")
    legends = [pair for fig in drawn for pair in fig["legends"]]
    assert len(legends) >= len(drawn) >= 4
    for legend, axes in legends:
        assert not _overlaps(legend, axes)


def test_missing_bars_are_marked_not_estimable(drawn):
    figures.reliability_figures(report_fixtures.psychometric_reliability())
    generate, logprob = drawn[0], drawn[2]  # bfi44 by each scorer
    assert generate["texts"][0].count("n/e") == 5  # the base method's five traits
    assert logprob["texts"][0].count("n/e") == 10  # and sft's, whose answers barely vary
    assert "not estimable" in generate["titles"][0]


def test_markdown_image_embeds_the_png():
    png = figures.dialogue_quality_figure(report_fixtures.dialogue_quality())
    text = plots.markdown_image(png, "accuracy")
    match = re.fullmatch(r"!\[accuracy\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
    assert match and base64.b64decode(match.group(1)) == png
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_long_tables_fold_under_their_caption(built):
    page, _ = built
    text = section_text(page, "inventory_scores")
    assert "scores of each persona on its own trait (100 rows)" in text
    body = re.search(r'<section id="inventory_scores".*?</section>', page, re.S).group(0)
    assert re.search(r"<details><summary>scores of each persona on its own trait", body)
    short = re.search(r'<section id="dialogue_quality".*?</section>', page, re.S).group(0)
    assert "<details>" not in short  # ten personas stay open
