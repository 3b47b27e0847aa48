"""How a stage's assets are declared: ``build(settings)`` functions and versioned assets.

Every defs module has ``build(settings) -> Stage``; ``definitions.build_definitions`` calls
each once with the one Settings object, so nothing reads settings at import time. Inside,
assets are declared with :func:`versioned_asset`, which is ``dg.asset`` plus the code version
that lib.common.code_version computes from what the function really uses:

- the function, the defs helpers it calls and the lib modules they reach (with the data
  files those modules read);
- the settings it reads: the fields of its config section it reads (``config.alpha``), any
  ``settings.<section>.<field>`` it reads, and the whole section of a resource it takes that
  is built from settings (``model: ModelBackend`` reads ``model``).

The settings values covered go in the asset's metadata (``big5/settings``); the tracker
checks at run time that the asset read no setting outside them, and mixes a launchpad
override of one of them into the data version.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from big5_dagster.config import Section, Settings, section_of
from big5_dagster.lib.common.code_version import ALL_FIELDS, code_reach

SETTINGS_METADATA = "big5/settings"
"""Asset metadata: settings field ('section.field') -> the value its code version covers."""
CONFIG_SECTION_METADATA = "big5/config_section"
"""Asset metadata: the settings section its config (the launchpad fields) comes from."""
CODE_REACH_METADATA = "big5/code_reach"
"""Asset metadata: the lib modules and package data files its code version covers."""
PROFILE_METADATA = "big5/profile"

# Infrastructure that records and stores results but never decides what they are: an edit
# there does not make assets stale.
INFRASTRUCTURE: tuple[str, ...] = (
    "big5_dagster.config",
    "big5_dagster.defs.factory",
    "big5_dagster.defs.tracking",
    "big5_dagster.partitions",
    "big5_dagster.paths",
    "big5_dagster.resources.artifacts",
    "big5_dagster.resources.warehouse",
)
# Plots in an asset's metadata show a result without changing it: their code is left out
# of every code version but the report's (whose output the plots are), so a new colour
# does not retrain an adapter.
PRESENTATION: tuple[str, ...] = ("big5_dagster.lib.report.figures", "big5_dagster.lib.report.plots")
WATCHED = ("config", "settings")
REMOTE_STEP_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=5)
"""Where steps run on other machines (Celery workers, Kubernetes pods), losing one is an
ordinary event: its step is retried, resuming from what it left on the shared disk.
Kubernetes retries a step whose pod died itself; on Celery the redelivered step fails
into this policy (defs/tracking.py: fail_if_previous_attempt_lost)."""


def step_retry_policy(settings: Settings) -> dg.RetryPolicy | None:
    """The retry policy of every step: none on one machine (an error there is not
    transient and is best seen at once), REMOTE_STEP_RETRY_POLICY on celery and k8s."""
    return REMOTE_STEP_RETRY_POLICY if settings.executor in ("celery", "k8s") else None


@dataclass(frozen=True)
class Stage:
    """What one defs module contributes to the definitions."""

    assets: list[dg.AssetsDefinition]
    asset_checks: list[dg.AssetChecksDefinition] = field(default_factory=list)


@dataclass(frozen=True)
class AssetVersion:
    code_version: str
    settings: dict[str, Any]
    """'section.field' -> value: every setting the asset reads."""
    config_section: str | None
    modules: list[str]
    data_files: list[str]


def asset_version(
    fn: Callable[..., Any], settings: Settings, presents: bool = False
) -> AssetVersion:
    """The code version of an asset function built with ``settings`` (see the module doc);
    ``presents``: its output is a presentation (the report), so plot code counts too."""
    signature = inspect.signature(fn)
    config_section = None
    resources = []
    for parameter in signature.parameters.values():
        annotation = parameter.annotation
        if not isinstance(annotation, type):
            continue
        if parameter.name == "config":
            found = section_of(annotation)
            if found is None:
                raise TypeError(f"{fn.__name__}: its config must come from a settings section")
            config_section = found[0]
        elif issubclass(annotation, dg.ConfigurableResource):
            resources.append(annotation)
    exclude = INFRASTRUCTURE if presents else (*INFRASTRUCTURE, *PRESENTATION)
    reach = code_reach(fn, *resources, watch=WATCHED, exclude=exclude)
    read: set[str] = set()
    for chain in reach.reads:
        if chain[0] == "config" and config_section is not None:
            read |= _fields(settings, config_section, chain[1:])
        elif chain[0] == "settings":
            if len(chain) == 1 or chain[1] == ALL_FIELDS:
                raise TypeError(f"{fn.__name__} uses the whole settings: read the sections")
            read |= _fields(settings, chain[1], chain[2:])
    for resource in resources:
        found = section_of(resource)
        if found is not None:
            read |= _fields(settings, found[0], ())
    values = {name: _value(settings, name) for name in sorted(read)}
    return AssetVersion(
        code_version=reach.version(values),
        settings=values,
        config_section=config_section,
        modules=reach.modules,
        data_files=sorted(reach.data_files),
    )


def _fields(settings: Settings, section: str, rest: tuple[str, ...]) -> set[str]:
    """'section.field' names read by ``settings.<section>.<rest...>``."""
    value = getattr(settings, section)
    if not isinstance(value, Section):  # a top-level value (profile, executor)
        return {section}
    names = list(type(value).model_fields)
    if rest and rest[0] in names:
        return {f"{section}.{rest[0]}"}
    return {f"{section}.{name}" for name in names}  # used whole, dumped or passed on


def _value(settings: Settings, name: str) -> Any:
    section, _, field_name = name.partition(".")
    value = getattr(settings, section)
    if field_name:
        value = getattr(value, field_name)
    return value.model_dump(mode="json") if isinstance(value, Section) else value


def versioned_asset(
    settings: Settings, presents: bool = False, **asset_args: Any
) -> Callable[..., dg.AssetsDefinition]:
    """``dg.asset(**asset_args)`` with the code version of what the function really uses
    (``presents``: see ``asset_version``)."""

    def decorate(fn: Callable[..., Any]) -> dg.AssetsDefinition:
        version = asset_version(fn, settings, presents)
        args = dict(asset_args)
        args.setdefault("retry_policy", step_retry_policy(settings))
        metadata: Mapping[str, Any] = {
            **args.pop("metadata", {}),
            SETTINGS_METADATA: version.settings,
            CONFIG_SECTION_METADATA: version.config_section or "",
            CODE_REACH_METADATA: {"modules": version.modules, "data": version.data_files},
        }
        return dg.asset(code_version=version.code_version, metadata=metadata, **args)(fn)

    return decorate
