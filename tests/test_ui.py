"""The Dagster UI and its GraphQL API, served the way `make ui` serves them.

dagster-webserver and dagster-daemon run from the repo's workspace.yaml against a
temporary DAGSTER_HOME and data dir, with a small BIG5_CONFIG on the tiny random model.
A run launched from the UI or over GraphQL goes through the daemon's run queue and a run
worker process that loads the code location again, so each run costs a few seconds of
work plus one import of big5_dagster.definitions.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import report_fixtures
from ui_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    VENV_BIN,
    DagsterServices,
    dagster_services,
    pipeline_env,
    write_dagster_home,
    write_small_config,
)

from big5_dagster.lib.report.page import build_report

HEX_VERSION = re.compile(r"^[0-9a-f]{16}$")


@pytest.fixture(scope="module")
def services(tmp_path_factory, tiny_model_dir: Path) -> Iterator[DagsterServices]:
    root = tmp_path_factory.mktemp("ui")
    home = write_dagster_home(root / "dagster_home")
    config = write_small_config(root / "small.yaml", tiny_model_dir)
    env = pipeline_env(root / "data", home, config)
    with dagster_services(env, root / "logs") as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


RUNS_FROM_UI = """
{
  runsOrError(filter: {tags: [{key: "dagster/from_ui", value: "true"}]}) {
    ... on Runs { results { runId } }
  }
}
"""


def test_materialize_from_the_ui_then_lineage_shows_upstream(services, browser, tmp_path):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(90_000)  # a busy 2-core CI machine renders slowly
    expect.set_options(timeout=30_000)
    try:
        page.goto(f"{services.url}/assets/soda_scenarios")
        # The button's accessible name includes its icon's label, so match the visible text.
        page.get_by_role("button").filter(has_text=re.compile(r"^Materialize$")).click()
        toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).first
        expect(toast).to_be_visible()
        prefix = re.search(r"Launched run ([0-9a-f]{8})", toast.inner_text()).group(1)
        runs = services.graphql(RUNS_FROM_UI)["runsOrError"]["results"]
        (run_id,) = [r["runId"] for r in runs if r["runId"].startswith(prefix)]
        status = services.wait_for_run(run_id)
        assert status == "SUCCESS", services.run_failure(run_id)

        # The lineage of the SQL model over the scenarios: its upstream Python asset is
        # drawn, and it is the one node whose latest event is the run launched above.
        page.goto(f"{services.url}/assets/stg_soda_scenarios")
        page.get_by_role("tab", name="Lineage").click()
        expect(page).to_have_url(re.compile(r"view=lineage"))
        for name in ("soda_scenarios", "scenario_stats"):  # upstream and downstream nodes
            expect(page.get_by_text(name, exact=True).filter(visible=True)).to_have_count(1)
        upstream_node = page.locator("foreignObject").filter(
            has=page.get_by_text("soda_scenarios", exact=True)
        )
        expect(upstream_node.get_by_text("Materialized", exact=True)).to_be_visible()
        expect(page.get_by_text("Materialized", exact=True).filter(visible=True)).to_have_count(1)

        screenshot = tmp_path / "stg_soda_scenarios_lineage.png"
        page.screenshot(path=str(screenshot), full_page=True)
    finally:
        page.close()
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000


MATERIALIZATIONS = """
query Materializations($path: [String!]!, $partitions: [String!]) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(partitions: $partitions, limit: 1) {
        partition
        runId
        tags { key value }
        metadataEntries { label ... on TextMetadataEntry { text } }
      }
    }
  }
}
"""


def latest_materialization(
    services: DagsterServices, asset: str, partition: str | None = None
) -> dict:
    data = services.graphql(
        MATERIALIZATIONS, {"path": [asset], "partitions": [partition] if partition else None}
    )
    (event,) = data["assetOrError"]["assetMaterializations"]
    event["tags"] = {t["key"]: t["value"] for t in event["tags"]}
    event["metadata"] = {m["label"]: m.get("text") for m in event["metadataEntries"]}
    return event


@pytest.fixture(scope="module")
def experts_run(services) -> str:
    """One run with the partition tag only (as the UI and GraphQL clients launch it) that
    also builds the unpartitioned posts: the tag reaches every step of the run, so each
    asset must take a partition key only if it is partitioned. The experts' quality gate
    needs the trait classifier, which is not built here."""
    run_id = services.launch_assets(
        ["psychgenerator_posts", "trait_experts"], partition="openness", checks=[]
    )
    status = services.wait_for_run(run_id)
    assert status == "SUCCESS", services.run_failure(run_id)
    return run_id


def test_partitioned_run_over_graphql_records_lineage(services, experts_run):
    run_id = experts_run

    experts = latest_materialization(services, "trait_experts", "openness")
    posts = latest_materialization(services, "psychgenerator_posts")
    assert experts["runId"] == posts["runId"] == run_id
    assert experts["partition"] == "openness"
    assert posts["partition"] is None
    experts_version = experts["metadata"]["data_version"]
    posts_version = posts["metadata"]["data_version"]
    assert HEX_VERSION.match(experts_version) and HEX_VERSION.match(posts_version)
    # Dagster tracks the same content-hash versions the warehouse lineage records.
    assert experts["tags"]["dagster/data_version"] == experts_version
    assert experts["tags"]["dagster/input_data_version/psychgenerator_posts"] == posts_version

    lineage = subprocess.run(
        [str(VENV_BIN / "big5"), "lineage", "trait_experts", "--partition", "openness"],
        env=services.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert lineage.returncode == 0, lineage.stderr
    root, *upstream = lineage.stdout.strip().splitlines()
    assert root.startswith(f"trait_experts[openness]  data={experts_version}  ")
    assert f"run={run_id[:8]}" in root
    assert len(upstream) == 1, lineage.stdout
    assert upstream[0].startswith(f"└── psychgenerator_posts  data={posts_version}  "), (
        lineage.stdout
    )


def test_an_asset_page_shows_its_plot(services, experts_run, browser, tmp_path):
    """The experts' loss curves are in the asset's metadata as an embedded PNG: the asset
    page opens it as a picture."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(90_000)
    expect.set_options(timeout=30_000)
    try:
        page.goto(f"{services.url}/assets/trait_experts")
        row = page.locator("tr").filter(has=page.get_by_text("loss_plot", exact=True))
        row.get_by_text("[Show Markdown]").click()
        image = page.get_by_role("dialog").locator('img[src^="data:image/png;base64,"]')
        expect(image).to_be_visible()
        assert image.get_attribute("alt") == "openness expert loss curves"
        width, height = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
        assert width > 200 and height > 100  # a decoded picture, not a broken icon
        screenshot = tmp_path / "trait_experts_loss_plot.png"
        page.screenshot(path=str(screenshot))
    finally:
        page.close()
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_opens_with_its_findings_in_the_browser(services, browser, tmp_path):
    """big5_report materialized from this instance, then read the way a person reads it: the
    first section is the signal ledger, the findings come next (the two lead), lineage comes
    last, every plot decodes."""
    from playwright.sync_api import expect

    run_id = services.launch_assets(["big5_report"])
    status = services.wait_for_run(run_id)
    assert status == "SUCCESS", services.run_failure(run_id)
    report = Path(services.env["BIG5_DATA_DIR"]) / "big5_report" / "all" / "report.html"
    rich = tmp_path / "report_of_a_full_run.html"  # every section filled, known findings
    rich.write_text(build_report(report_fixtures.report_data())[0], encoding="utf-8")

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    expect.set_options(timeout=30_000)
    try:
        for n, path in enumerate((report, rich)):
            page.goto(path.as_uri())
            first = page.locator("section").first
            expect(first).to_have_attribute("id", "signal_ledger")
            expect(first).to_have_class("lead")
            heading = first.get_by_role(
                "heading", name="Signal ledger: where the trait signal lives"
            )
            expect(heading).to_be_in_viewport()
            findings = page.locator("section").nth(1)
            expect(findings).to_have_attribute("id", "findings")
            expect(findings).to_have_class("lead")
            expect(page.locator("section").last).to_have_attribute("id", "lineage")
            sizes = page.locator("img").evaluate_all("all => all.map(i => i.naturalWidth)")
            assert all(w > 0 for w in sizes), sizes
            screenshot = tmp_path / f"report{n}.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # the full run's findings are computed sentences, right after the ledger
        expect(findings.get_by_text("personas above chance")).to_be_visible()
        assert len(sizes) >= 15
    finally:
        page.close()
