"""Where asset artifacts live on disk (assets_data/<asset>/<partition>/...)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from big5_dagster import paths


class ArtifactStore(dg.ConfigurableResource):
    """The data directory: files of each asset and partition; large artifacts pass by path."""

    root: str

    @property
    def root_path(self) -> Path:
        return Path(self.root)

    def asset_dir(self, asset: str, partition: str | None = None) -> Path:
        return paths.asset_dir(self.root_path, asset, partition)

    def file(self, asset: str, filename: str, partition: str | None = None) -> Path:
        return self.asset_dir(asset, partition) / filename
