"""The local task sets as lm-eval tasks: JSONL data files, one task YAML each (built from the
templates in ``data/reasoning/task_configs.yaml``), a group YAML and a manifest.

Notes on lm_eval 0.4.13 that shape the code:

- A local ``data_files`` path must be absolute (lm_eval passes it to ``datasets`` as is,
  relative to the working directory), so the YAMLs name the final directory; a moved task
  directory is detected and reported, not silently mis-read.
- For multiple choice, lm_eval predicts ``np.argmax`` of the per-choice log-likelihoods
  (ties go to the first choice), and identical context+continuation requests are computed
  in one forward pass (``group_by="contexts"``), so identical choices tie exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from big5_dagster.lib.common.files import atomic_dir
from big5_dagster.lib.common.hashing import hash_file, hash_json
from big5_dagster.lib.common.package_data import load_yaml
from big5_dagster.lib.reasoning.items import (
    generate_arithmetic_items,
    generate_commonsense_items,
    generate_social_items,
)
from big5_dagster.lib.reasoning.tasks import (
    FLEXIBLE_FILTER,
    GENERATOR_VERSION,
    LOCAL_GROUP,
    LOCAL_TASK_NAMES,
    MANIFEST_FILE,
    NO_FILTER,
    STRICT_FILTER,
    BenchmarkTask,
    OutputType,
    ReasoningError,
)


@dataclass(frozen=True)
class LocalTaskData:
    """A task to write: its rows per split and its lm_eval config (without dataset paths)."""

    name: str
    config: Mapping[str, Any]
    """lm_eval task config: everything but ``task``, ``dataset_*`` and the split names."""
    test_rows: Sequence[Mapping[str, Any]]
    fewshot_rows: Sequence[Mapping[str, Any]] = ()
    num_fewshot: int = 0
    filters: tuple[str, ...] = (NO_FILTER,)
    primary: tuple[tuple[str, str], ...] = ()

    @property
    def output_type(self) -> OutputType:
        return self.config["output_type"]

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(m["metric"] for m in self.config["metric_list"])


ChoiceFormat = Literal["text", "letter"]


def _templates() -> dict[str, Any]:
    return load_yaml("reasoning", "task_configs.yaml")


def multiple_choice_config(
    question_text: str, *, n_choices: int, choice_format: ChoiceFormat = "text"
) -> dict[str, Any]:
    """lm_eval config of a multiple-choice task whose rows have ``choices`` and ``label``.

    ``question_text`` is the Jinja text of the question (without the answer cue).

    - ``text``: each choice's text is the scored continuation of "<question>\nAnswer:"
      (like SocialIQA and PIQA in lm_eval); acc (summed log-likelihood) and acc_norm (per
      character) can differ. One forward pass per choice.
    - ``letter``: the choices are listed as "A. ..." and the letters are scored (like
      CommonsenseQA, MMLU and GPQA in lm_eval). lm_eval scores all one-token continuations
      of a context from one forward pass, so an item costs one pass instead of one per
      choice: 3-5x cheaper, which matters with long persona prompts. acc_norm would equal
      acc (all continuations one character long), so only acc is computed.
    """
    template = _templates()["multiple_choice"]
    letters = template["letter"]["letters"]
    if not 2 <= n_choices <= len(letters):
        raise ReasoningError(f"n_choices must be between 2 and {len(letters)}, got {n_choices}")
    cue = template["answer_cue"]
    if choice_format == "text":
        doc_to_text, doc_to_choice = question_text + cue, template["text"]["doc_to_choice"]
    elif choice_format == "letter":
        line = template["letter"]["choice_line"]
        listed = "".join(
            line.replace("{letter}", letters[i]).replace("{index}", str(i))
            for i in range(n_choices)
        )
        doc_to_text, doc_to_choice = question_text + listed + cue, list(letters[:n_choices])
    else:
        raise ReasoningError(f"choice_format must be 'text' or 'letter', got {choice_format!r}")
    common = template["config"]
    return {
        "output_type": common["output_type"],
        "doc_to_text": doc_to_text,
        "doc_to_choice": doc_to_choice,
        "doc_to_target": common["doc_to_target"],
        "target_delimiter": common["target_delimiter"],
        "metric_list": template[choice_format]["metric_list"],
    }


def arithmetic_config(max_gen_toks: int) -> dict[str, Any]:
    """lm_eval config of the word problems, shaped like lm_eval's GSM8K task (the
    ``generate_until`` template): the target (also the few-shot answer) is "<steps> The answer
    is N."; strict-match takes the number after the marker, flexible-extract the last number."""
    config = _templates()["generate_until"]
    config["generation_kwargs"]["max_gen_toks"] = max_gen_toks
    return config


def local_task_data(
    n_items: int | Mapping[str, int],
    seed: int,
    n_shots: int,
    *,
    n_fewshot_pool: int | None = None,
    max_gen_toks: int = 64,
    choice_format: ChoiceFormat = "text",
) -> list[LocalTaskData]:
    """The tiny profile's three task sets, generated from ``seed``.

    ``n_items``: test items per task, one count for all or a count per task name.
    """
    counts = dict.fromkeys(LOCAL_TASK_NAMES, n_items) if isinstance(n_items, int) else dict(n_items)
    unknown = sorted(set(counts) - set(LOCAL_TASK_NAMES))
    if unknown or set(counts) != set(LOCAL_TASK_NAMES):
        raise ReasoningError(
            f"n_items must be an int or give a count for each of {list(LOCAL_TASK_NAMES)}, "
            f"got {sorted(counts)}"
        )
    for name, count in counts.items():
        if not isinstance(count, int) or count < 1:
            raise ReasoningError(f"n_items[{name!r}] must be an integer >= 1, got {count!r}")
    if n_shots < 0:
        raise ReasoningError(f"n_shots must be >= 0, got {n_shots}")
    pool = max(8, 2 * n_shots) if n_fewshot_pool is None else n_fewshot_pool
    if pool < n_shots:
        raise ReasoningError(f"n_fewshot_pool ({pool}) must be >= n_shots ({n_shots})")
    arithmetic_test = generate_arithmetic_items(counts["arithmetic_word"], seed, split="test")
    arithmetic_fewshot = generate_arithmetic_items(
        pool, seed, split="fewshot", exclude={row["question"] for row in arithmetic_test}
    )
    acc = (("acc", NO_FILTER),)
    tasks = _templates()["tasks"]

    def multiple_choice(name: str) -> dict[str, Any]:
        task = tasks[name]
        return multiple_choice_config(
            task["question"], n_choices=task["n_choices"], choice_format=choice_format
        )

    return [
        LocalTaskData(
            "social_mc",
            multiple_choice("social_mc"),
            generate_social_items(counts["social_mc"], seed),
            primary=acc,
        ),
        LocalTaskData(
            "commonsense_mc",
            multiple_choice("commonsense_mc"),
            generate_commonsense_items(counts["commonsense_mc"], seed),
            primary=acc,
        ),
        LocalTaskData(
            "arithmetic_word",
            arithmetic_config(max_gen_toks),
            arithmetic_test,
            fewshot_rows=arithmetic_fewshot,
            num_fewshot=n_shots,
            filters=(STRICT_FILTER, FLEXIBLE_FILTER),
            primary=(("exact_match", STRICT_FILTER), ("exact_match", FLEXIBLE_FILTER)),
        ),
    ]


def _jsonl_bytes(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()


def write_task_set(
    directory: Path, tasks: Sequence[LocalTaskData], *, settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write JSONL data, one lm_eval YAML per task, a group YAML and ``manifest.json`` into
    ``directory`` (atomically: the folder is replaced whole) and return the manifest.

    A task's version is the content hash of its data files and its config (with data files
    named relative to the folder, so the hash does not depend on where the folder lives).
    ``settings`` (JSON-serializable) are recorded in the manifest as they are.
    """
    directory = Path(directory).resolve()
    names = [t.name for t in tasks]
    if len(set(names)) != len(names) or not names:
        raise ReasoningError(f"task names must be unique and non-empty, got {names}")
    entries = []
    with atomic_dir(directory) as tmp:
        for task in tasks:
            if not task.test_rows:
                raise ReasoningError(f"task {task.name!r} has no test rows")
            if task.num_fewshot > len(task.fewshot_rows):
                raise ReasoningError(
                    f"task {task.name!r}: num_fewshot {task.num_fewshot} needs at least as "
                    f"many few-shot rows, got {len(task.fewshot_rows)}"
                )
            splits = {"test": task.test_rows}
            if task.fewshot_rows:
                splits["fewshot"] = task.fewshot_rows
            data_files = {split: f"{task.name}.{split}.jsonl" for split in splits}
            for split, rows in splits.items():
                (tmp / data_files[split]).write_bytes(_jsonl_bytes(rows))
            portable = {
                "task": task.name,
                "tag": [LOCAL_GROUP + "_tasks"],
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": data_files},
                "test_split": "test",
                **({"fewshot_split": "fewshot"} if task.fewshot_rows else {}),
                "num_fewshot": task.num_fewshot,
                **{k: v for k, v in task.config.items() if k != "metadata"},
            }
            version = hash_json(
                {"config": portable, "data": {f: hash_file(tmp / f) for f in data_files.values()}}
            )
            config = {
                **portable,
                "dataset_kwargs": {
                    "data_files": {s: str(directory / f) for s, f in data_files.items()}
                },
                "metadata": {"version": GENERATOR_VERSION, "content_hash": version},
            }
            yaml_name = f"{task.name}.yaml"
            (tmp / yaml_name).write_text(yaml.safe_dump(config, sort_keys=False))
            entries.append(
                {
                    "name": task.name,
                    "version": version,
                    "yaml": yaml_name,
                    "data_files": data_files,
                    "n_items": len(task.test_rows),
                    "n_fewshot_pool": len(task.fewshot_rows),
                    "num_fewshot": task.num_fewshot,
                    "output_type": task.output_type,
                    "metrics": list(task.metrics),
                    "filters": list(task.filters),
                    "primary": [list(p) for p in task.primary],
                }
            )
        group = {
            "group": LOCAL_GROUP,
            "task": names,
            "metadata": {"version": GENERATOR_VERSION},
        }
        (tmp / "_group.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
        manifest = {
            "directory": str(directory),
            "group": LOCAL_GROUP,
            "generator_version": GENERATOR_VERSION,
            "version": hash_json([e["version"] for e in entries]),
            "tasks": entries,
            **dict(settings or {}),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def write_local_tasks(
    directory: Path,
    n_items: int | Mapping[str, int],
    seed: int,
    n_shots: int,
    *,
    n_fewshot_pool: int | None = None,
    max_gen_toks: int = 64,
    choice_format: ChoiceFormat = "text",
) -> dict[str, Any]:
    """Generate the tiny profile's local task sets and write them into ``directory``.

    ``n_items`` test items per task (one count, or a count per task name);
    ``arithmetic_word`` runs ``n_shots``-shot from a separate few-shot split
    (``n_fewshot_pool`` rows, default max(8, 2 * n_shots)) and generates at most
    ``max_gen_toks`` tokens; the multiple-choice tasks run 0-shot like the paper's, in
    ``choice_format`` (see :func:`multiple_choice_config`). Returns the manifest (see
    :func:`write_task_set`), which also records these settings.
    """
    tasks = local_task_data(
        n_items,
        seed,
        n_shots,
        n_fewshot_pool=n_fewshot_pool,
        max_gen_toks=max_gen_toks,
        choice_format=choice_format,
    )
    settings = {
        "seed": seed,
        "n_items": n_items if isinstance(n_items, int) else dict(n_items),
        "n_shots": n_shots,
        "max_gen_toks": max_gen_toks,
        "choice_format": choice_format,
    }
    return write_task_set(directory, tasks, settings=settings)


def load_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a task directory, checked against the files it names."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReasoningError(f"{path}: cannot read the task manifest ({e})") from e
    _check_manifest(manifest, source=str(path))
    return manifest


def _check_manifest(manifest: Mapping[str, Any], source: str) -> None:
    for field_name in ("directory", "tasks"):
        if field_name not in manifest:
            raise ReasoningError(f"{source}: manifest has no field {field_name!r}")
    directory = Path(manifest["directory"])
    for i, entry in enumerate(manifest["tasks"]):
        for field_name in ("name", "yaml", "data_files", "num_fewshot", "output_type", "metrics"):
            if field_name not in entry:
                raise ReasoningError(f"{source}: tasks[{i}] has no field {field_name!r}")
        for name in [entry["yaml"], *entry["data_files"].values()]:
            if not (directory / name).is_file():
                raise ReasoningError(
                    f"{source}: tasks[{i}] ({entry['name']}) names {directory / name}, which "
                    "does not exist; the task YAMLs hold absolute data paths, so rewrite a "
                    "moved task directory with write_local_tasks"
                )


def benchmark_tasks(manifest: Mapping[str, Any]) -> list[BenchmarkTask]:
    """The tasks of a local task directory's manifest, as :class:`BenchmarkTask` entries."""
    _check_manifest(manifest, source="manifest")
    return [
        BenchmarkTask(
            name=entry["name"],
            num_fewshot=int(entry["num_fewshot"]),
            output_type=entry["output_type"],
            metrics=tuple(entry["metrics"]),
            filters=tuple(entry.get("filters", [NO_FILTER])),
            primary=tuple(tuple(p) for p in entry.get("primary", [])),  # type: ignore[misc]
            version=entry.get("version"),
            include_path=str(manifest["directory"]),
        )
        for entry in manifest["tasks"]
    ]
