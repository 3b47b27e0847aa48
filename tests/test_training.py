"""SFT and DPO with trl + peft on the tiny random model: what the training stages rely on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from big5_dagster.lib.engine.hardware import auto_dtype
from big5_dagster.lib.training.adapted import load_adapted_model
from big5_dagster.lib.training.dpo import train_dpo
from big5_dagster.lib.training.inputs import normalize_prompts
from big5_dagster.lib.training.progress_lines import ProgressLines
from big5_dagster.lib.training.runs import (
    RUN_SETTINGS_FILE,
    count_training_tokens,
    last_complete_checkpoint,
)
from big5_dagster.lib.training.sft import make_sft_trainer, train_sft
from big5_dagster.lib.training.specs import LoraSpec, TrainingError, TrainSpec

PROMPT = "<|im_start|>user\nSay something about item {i}.<|im_end|>\n<|im_start|>assistant\n"
SFT_SPEC = TrainSpec(
    epochs=2,
    learning_rate=1e-2,
    batch_size=8,
    max_length=64,
    seed=0,
    save_steps=2,
    lr_scheduler="constant",
)


def sft_examples(n: int = 16) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": [PROMPT.format(i=i) + "The" for i in range(n)],
            "completion": [" cat sat on the mat."] * n,
        }
    )


class Interrupt(Exception):
    """Raised from the progress callback to simulate a crash mid-training."""


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir: Path, tmp_path_factory) -> dict:
    """One uninterrupted LoRA SFT run shared by several tests (training is the slow part)."""
    root = tmp_path_factory.mktemp("sft")
    lines: list[str] = []
    report = train_sft(
        tiny_model_dir,
        sft_examples(),
        root / "adapter",
        LoraSpec(),
        SFT_SPEC,
        root / "work",
        progress=lines.append,
        device="cpu",
    )
    return {"report": report, "adapter": root / "adapter", "work": root / "work", "lines": lines}


def test_sft_loss_falls_and_report_is_complete(sft_run: dict) -> None:
    report = sft_run["report"]
    assert report.steps == 4 and report.steps_this_run == 4  # 16 examples / 8 x 2 epochs
    assert [step for step, _ in report.loss_curve] == [1, 2, 3, 4]
    first, last = report.loss_curve[0][1], report.loss_curve[-1][1]
    assert last < first - 0.3, report.loss_curve
    assert report.final_loss == last
    assert report.resumed_from is None
    # Tokens: one pass is every example's prompt + completion + EOS; two epochs double it,
    # and trl's own running count of non-padding tokens agrees.
    assert report.train_tokens == 2 * report.metrics["tokens_per_epoch"] > 0
    assert report.metrics["trl_num_tokens_this_run"] == report.train_tokens
    assert report.tokens_per_second > 0 and report.seconds > 0
    data = json.loads(json.dumps(report.to_dict()))
    assert data["loss_curve"][0][0] == 1 and data["method"] == "sft"
    assert any(line.startswith("sft step 4/4, loss") for line in sft_run["lines"])


def test_sft_masks_prompt_and_trains_on_completion_with_eos(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    examples = sft_examples(2)
    trainer = make_sft_trainer(
        tiny_model_dir, examples, lora=LoraSpec(), spec=SFT_SPEC, work_dir=tmp_path, device="cpu"
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt_ids = tokenizer(examples["prompt"][0])["input_ids"]
    completion_ids = tokenizer(examples["prompt"][0] + examples["completion"][0])["input_ids"][
        len(prompt_ids) :
    ]
    expected = [-100] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id]
    labels = batch["labels"][0].tolist()
    assert labels == expected
    assert batch["input_ids"][0].tolist() == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert count_training_tokens(trainer) == 2 * len(expected)


def test_adapter_is_saved_whole_and_changes_outputs(sft_run: dict, tiny_model_dir: Path) -> None:
    adapter = sft_run["adapter"]
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in adapter.iterdir()
    }
    settings = json.loads((adapter / RUN_SETTINGS_FILE).read_text())
    assert settings["method"] == "sft" and settings["spec"]["seed"] == 0
    assert not any(p.name.startswith(".adapter.tmp") for p in adapter.parent.iterdir())
    assert not sft_run["work"].exists()  # checkpoints removed after the final write

    loaded = load_adapted_model(tiny_model_dir, adapter, device="cpu")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = loaded.tokenizer(PROMPT.format(i=0) + "The", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        adapted_logits = loaded.model(input_ids=ids).logits[0, -1]
        base_logits = base(input_ids=ids).logits[0, -1]
    assert not torch.allclose(adapted_logits, base_logits, atol=1e-4)
    cat = loaded.tokenizer(" cat", add_special_tokens=False)["input_ids"][0]
    # The adapter learned the completion: " cat" after "The" is more likely than under the base.
    assert adapted_logits.log_softmax(-1)[cat] > base_logits.log_softmax(-1)[cat]


def test_interrupted_sft_resumes_from_checkpoint_to_the_same_weights(
    sft_run: dict, tiny_model_dir: Path, tmp_path: Path
) -> None:
    output, work = tmp_path / "adapter", tmp_path / "work"

    def crash_after_first_checkpoint(line: str) -> None:
        if line.endswith("saved checkpoint-2"):
            raise Interrupt

    with pytest.raises(Interrupt):
        train_sft(
            tiny_model_dir,
            sft_examples(),
            output,
            LoraSpec(),
            SFT_SPEC,
            work,
            progress=crash_after_first_checkpoint,
            device="cpu",
        )
    assert not output.exists()  # nothing half-done under the final name
    assert not list(tmp_path.glob(".adapter.tmp-*"))
    assert (work / "checkpoint-2" / "trainer_state.json").is_file()

    report = train_sft(
        tiny_model_dir, sft_examples(), output, LoraSpec(), SFT_SPEC, work, device="cpu"
    )
    assert report.resumed_from == "checkpoint-2"
    assert report.steps == 4 and report.steps_this_run == 2
    assert [s for s, _ in report.loss_curve] == [1, 2, 3, 4]
    resumed = load_file(output / "adapter_model.safetensors")
    straight = load_file(sft_run["adapter"] / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)


def fake_checkpoint(work: Path, step: int, *, complete: bool) -> None:
    folder = work / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_last_complete_checkpoint_skips_one_cut_off_mid_write(tmp_path: Path) -> None:
    assert last_complete_checkpoint(tmp_path / "missing") is None
    fake_checkpoint(tmp_path, 2, complete=True)
    fake_checkpoint(tmp_path, 10, complete=True)
    fake_checkpoint(tmp_path, 12, complete=False)  # trainer_state.json is written last
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"


def test_checkpoints_of_other_settings_are_discarded_not_resumed(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    # A checkpoint left by a run with other settings (it would fail to load if resumed).
    fake_checkpoint(work, 2, complete=True)
    (work / RUN_SETTINGS_FILE).write_text(json.dumps({"method": "sft", "spec": "other"}))
    one_epoch = dataclasses.replace(SFT_SPEC, epochs=1)
    report = train_sft(
        tiny_model_dir, sft_examples(), tmp_path / "a", LoraSpec(), one_epoch, work, device="cpu"
    )
    assert report.resumed_from is None and report.steps == 2
    assert not work.exists()


def dpo_pairs(n: int) -> pd.DataFrame:
    # Separable: the chosen reply is always one word, the rejected always another.
    return pd.DataFrame(
        {
            "prompt": [PROMPT.format(i=i) for i in range(n)],
            "chosen": ["Yes"] * n,
            "rejected": ["No"] * n,
        }
    )


DPO_SPEC = TrainSpec(
    epochs=2,
    learning_rate=1e-2,
    batch_size=4,
    max_length=64,
    seed=0,
    save_steps=100,
    lr_scheduler="constant",
    beta=0.1,
)


def test_dpo_reward_accuracy_rises_on_separable_pairs(tiny_model_dir: Path, tmp_path: Path) -> None:
    report = train_dpo(
        tiny_model_dir, dpo_pairs(4), tmp_path / "dpo", LoraSpec(), DPO_SPEC, tmp_path / "work",
        device="cpu",
    )  # fmt: skip
    accuracy = report.metrics["rewards/accuracies_curve"]
    assert accuracy[0][1] == 0.0  # step 1: policy == reference, no margin yet
    assert report.metrics["rewards/accuracies"] > 0.5
    assert report.metrics["rewards/margins"] > 0
    assert report.loss_curve[-1][1] < report.loss_curve[0][1]
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()


def test_dpo_from_sft_adapter_uses_it_as_reference_and_saves_one_adapter(
    sft_run: dict, tiny_model_dir: Path, tmp_path: Path
) -> None:
    report = train_dpo(
        tiny_model_dir,
        dpo_pairs(4),
        tmp_path / "dpo",
        LoraSpec(),
        DPO_SPEC,
        tmp_path / "work",
        init_adapter=sft_run["adapter"],
        device="cpu",
    )
    # The reference is the SFT model: at step 1 the policy (the same adapter) matches it exactly.
    assert report.metrics["rewards/chosen_curve"][0][1] == 0.0
    assert report.metrics["rewards/accuracies"] > 0.5
    saved = load_file(tmp_path / "dpo" / "adapter_model.safetensors")
    sft = load_file(sft_run["adapter"] / "adapter_model.safetensors")
    assert saved.keys() == sft.keys()  # the trained adapter only, not trl's "ref" copy
    assert not (tmp_path / "dpo" / "ref").exists()
    assert any(not torch.equal(saved[k], sft[k]) for k in saved)


def test_dpo_rejects_a_lora_spec_that_does_not_match_the_init_adapter(
    sft_run: dict, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(TrainingError, match="r=8"):
        train_dpo(
            tiny_model_dir, dpo_pairs(4), tmp_path / "dpo", LoraSpec(r=4), DPO_SPEC,
            tmp_path / "work", init_adapter=sft_run["adapter"], device="cpu",
        )  # fmt: skip


def test_bad_training_rows_name_the_row_and_field(tiny_model_dir: Path, tmp_path: Path) -> None:
    bad = sft_examples(3)
    bad.loc[1, "completion"] = None
    with pytest.raises(ValueError, match=r"row 1, field 'completion'"):
        train_sft(tiny_model_dir, bad, tmp_path / "a", LoraSpec(), SFT_SPEC, tmp_path / "w")
    with pytest.raises(ValueError, match=r"lacks columns \['rejected'\]"):
        train_dpo(
            tiny_model_dir, dpo_pairs(2).drop(columns="rejected"), tmp_path / "b", LoraSpec(),
            DPO_SPEC, tmp_path / "w",
        )  # fmt: skip
    with pytest.raises(ValueError, match="TrainSpec.batch_size"):
        TrainSpec(epochs=1, learning_rate=1e-3, batch_size=0, max_length=64, seed=0)


def test_full_fine_tune_writes_a_loadable_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    one_step = dataclasses.replace(SFT_SPEC, epochs=1, learning_rate=1e-3)
    report = train_sft(
        tiny_model_dir, sft_examples(8), tmp_path / "full", None, one_step, tmp_path / "w",
        device="cpu",
    )  # fmt: skip
    assert report.steps == 1
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not (tmp_path / "full" / "adapter_config.json").exists()
    weight = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(trained.state_dict()[weight], base.state_dict()[weight])


class _BosTokenizer:
    """Stands in for a Llama-3-style tokenizer that prepends BOS to every encoding."""

    bos_token, bos_token_id = "<s>", 1

    def __call__(self, text: str) -> dict:
        return {"input_ids": [1, 42]}


def test_prompts_lose_a_rendered_bos_only_when_the_tokenizer_adds_one(tiny_model_dir) -> None:
    prompts = ["<s>user: hi", "no bos here"]
    assert normalize_prompts(_BosTokenizer(), prompts) == ["user: hi", "no bos here"]
    smollm2 = AutoTokenizer.from_pretrained(tiny_model_dir)  # adds no BOS: nothing changes
    rendered = [PROMPT.format(i=0)]
    assert normalize_prompts(smollm2, rendered) == rendered


def test_progress_lines_can_report_about_n_steps_and_always_the_last():
    from transformers import TrainerControl, TrainerState

    lines: list[str] = []
    callback = ProgressLines(lines.append, "trait classifier", lines=20)
    state = TrainerState(max_steps=103)
    callback.on_train_begin(None, state, TrainerControl())
    for step in range(1, 104):
        state.global_step = step
        callback.on_log(None, state, TrainerControl(), logs={"loss": 1.0 / step})
    steps = [int(line.split()[3].split("/")[0]) for line in lines[1:]]
    assert lines[0] == "trait classifier: training for 103 steps"
    assert steps == [*range(5, 101, 5), 103]  # every 103 // 20 = 5 steps, and the last


def test_unshuffled_dpo_trains_its_pairs_in_the_given_order(tiny_model_dir: Path, tmp_path: Path):
    """Mirrored couples only share an optimizer step if the trainer keeps the row order."""
    from big5_dagster.lib.training.dpo import make_dpo_trainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def first_batch_items(shuffle: bool) -> list[str]:
        spec = dataclasses.replace(DPO_SPEC, shuffle=shuffle)
        trainer = make_dpo_trainer(
            tiny_model_dir, dpo_pairs(16), lora=LoraSpec(), spec=spec,
            work_dir=tmp_path / f"work-{shuffle}", device="cpu",
        )  # fmt: skip
        batch = next(iter(trainer.get_train_dataloader()))
        texts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
        # trl stacks each pair's chosen and rejected rows: one item per pair, in batch order
        return list(dict.fromkeys(t.split("item ")[1].split(".")[0] for t in texts))

    assert first_batch_items(shuffle=False) == ["0", "1", "2", "3"]
    assert first_batch_items(shuffle=True) != ["0", "1", "2", "3"]


def test_bf16_precision_trains_fp32_lora_weights_over_a_bf16_base(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """bf16 training holds the frozen base in bf16 (no re-cast of fp32 weights in every
    forward) but the LoRA weights it trains in fp32, so the optimizer's small updates are not
    rounded away; fp32 precision trains fp32 throughout, without autocast. The precision is
    part of the run's settings, so checkpoints of the other never resume."""
    from big5_dagster.lib.training.inputs import use_bf16
    from big5_dagster.lib.training.runs import settings_of_run

    runs = {}
    for precision in ("bfloat16", "float32"):
        spec = dataclasses.replace(SFT_SPEC, precision=precision, epochs=1)
        trainer = make_sft_trainer(
            tiny_model_dir, sft_examples(8), lora=LoraSpec(), spec=spec,
            work_dir=tmp_path / precision, device="cpu",
        )  # fmt: skip
        assert trainer.args.bf16 is (precision == "bfloat16")
        trained = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
        frozen = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
        assert trained == {torch.float32}
        assert frozen == {torch.bfloat16 if precision == "bfloat16" else torch.float32}
        trainer.train()
        assert trainer.state.log_history[-1]["train_loss"] > 0
        runs[precision] = settings_of_run(
            "sft", tiny_model_dir, sft_examples(8), LoraSpec(), spec, None, "cpu"
        )
    assert runs["bfloat16"]["bf16"] is True and runs["float32"]["bf16"] is False
    assert runs["bfloat16"]["spec"]["precision"] == "bfloat16"
    assert use_bf16("auto", "cpu") is (auto_dtype("cpu") == "bfloat16")


def test_the_cpu_trainer_loss_is_trls_completion_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    """On a CPU the SFT loss comes from the model's own logits instead of trl's fused LM head
    (whose torch fallback is slow there): on a padded batch of completions of different
    lengths it is the same token-mean NLL over the completion tokens, with and without the
    token count of an accumulated batch."""
    from trl import SFTTrainer

    examples = pd.DataFrame(
        {
            "prompt": [PROMPT.format(i=i) for i in range(4)],
            "completion": [
                " cat.",
                " cat sat on the mat.",
                " a dog ran far away from home.",
                " no",
            ],
        }
    )
    spec = dataclasses.replace(SFT_SPEC, epochs=1, batch_size=4)
    trainer = make_sft_trainer(
        tiny_model_dir, examples, lora=LoraSpec(), spec=spec, work_dir=tmp_path, device="cpu"
    )
    assert type(trainer).compute_loss is not SFTTrainer.compute_loss
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"][:, 1:]
    completion_tokens = int((labels != -100).sum())
    assert 0 < completion_tokens < int(batch["attention_mask"][:, 1:].sum())  # prompts ignored
    for count in (None, torch.tensor(2 * completion_tokens)):
        with torch.no_grad():
            ours = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=count)
            trls = SFTTrainer.compute_loss(
                trainer, trainer.model, dict(batch), num_items_in_batch=count
            )
        assert torch.allclose(ours, trls, rtol=1e-4), (count, ours, trls)


def test_training_follows_the_model_dtype():
    from big5_dagster.defs.specs import training_precision

    assert training_precision("bfloat16") == "bfloat16"
    assert training_precision("float32") == "float32"
    assert training_precision("auto") == training_precision("float16") == "auto"


def test_training_frees_its_model_when_it_returns(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The demo runs every step in one process: a trainer left in reference cycles would keep
    its model (and optimizer state) alive under the next training's peak memory."""
    import gc

    from transformers import PreTrainedModel

    def live_models() -> int:
        return sum(isinstance(o, PreTrainedModel) for o in gc.get_objects())

    gc.collect()
    before = live_models()
    gc.disable()  # only the training's own collection may free it
    try:
        train_sft(
            tiny_model_dir, sft_examples(8), tmp_path / "adapter", LoraSpec(),
            dataclasses.replace(SFT_SPEC, epochs=1), tmp_path / "work", device="cpu",
        )  # fmt: skip
        assert live_models() == before
    finally:
        gc.enable()
