"""A bad corpus file fails its asset with file, row and column named, and loses nothing stored."""

import duckdb
import numpy as np
import pandas as pd
import pytest

from big5_dagster import paths
from big5_dagster.config import load_settings
from big5_dagster.definitions import build_definitions
from big5_dagster.lib.common.hashing import hash_file
from big5_dagster.lib.corpora.schema import CorpusError


def psychadapter_frame(n: int = 60) -> pd.DataFrame:
    """Posts with the hub dataset's columns (message_id, message, <abbr>_z scores)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "message_id": [f"m{i}" for i in range(n)],
            "message": [f"post number {i}" for i in range(n)],
        }
    )
    for col in ("ope_z", "con_z", "ext_z", "agr_z", "neu_z"):
        frame[col] = rng.normal(size=n)
    return frame


def run_posts(defs, instance, path):
    import dagster as dg

    return dg.materialize(
        defs.assets,
        selection=["psychgenerator_posts"],
        instance=instance,
        resources=defs.resources,
        run_config={
            "ops": {
                "psychgenerator_posts": {"config": {"source": "local", "local_path": str(path)}}
            }
        },
    )


def corrupt_missing_column(f):
    return f.drop(columns=["con_z"]), "conscientiousness", "header"


def corrupt_non_numeric(f):
    f["ext_z"] = [f"{v:.3f}" for v in f["ext_z"]]  # a text column, as a CSV export gives
    f.loc[7, "ext_z"] = "very"
    return f, "ext_z", "row 8"


def corrupt_empty_text(f):
    f.loc[11, "message"] = "   "
    return f, "message", "row 12"


def corrupt_unknown_trait(f):
    f["hon_z"] = 0.5
    return f, "hon_z", "header"


@pytest.mark.parametrize(
    "corrupt",
    [corrupt_missing_column, corrupt_non_numeric, corrupt_empty_text, corrupt_unknown_trait],
)
def test_bad_posts_file_fails_and_keeps_the_previous_table(tmp_path, tiny_backend, corrupt):
    import dagster as dg

    root = paths.data_dir()
    defs = build_definitions(load_settings(), root, resources={"model": tiny_backend})
    good = tmp_path / "good.parquet"
    psychadapter_frame().to_parquet(good)
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_posts(defs, instance, good).success
        artifact = root / "psychgenerator_posts" / "all" / "posts.parquet"
        stored_hash = hash_file(artifact)

        bad_frame, column, row = corrupt(psychadapter_frame())
        bad = tmp_path / "bad.parquet"
        bad_frame.to_parquet(bad)
        with pytest.raises(CorpusError) as failure:
            run_posts(defs, instance, bad)
    error = failure.value
    message = str(error)
    assert str(bad) in message and repr(column) in message
    assert error.column == column
    if row != "header":
        assert row in message

    # nothing stored was lost or half-written
    assert hash_file(artifact) == stored_hash
    with duckdb.connect(str(paths.warehouse_path(root)), read_only=True) as con:
        ids = [
            r[0]
            for r in con.execute("SELECT post_id FROM psychgenerator_posts ORDER BY 1").fetchall()
        ]
        assert ids == sorted(f"m{i}" for i in range(60))
        n_lineage = con.execute(
            "SELECT count(*) FROM lineage.materializations WHERE asset = 'psychgenerator_posts'"
        ).fetchone()[0]
    assert n_lineage == 1
