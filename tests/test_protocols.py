"""Evaluation protocols (suite.protocol): each row of issue 15's table, through the real path.

Requests come from lmms-eval's own task definitions (``build_all_requests`` on the fixtures) and
go through ``GC2BenchLMM.generate_until`` and the tiny model's real ``generate``; a spy on
``model.generate`` records the kwargs and input ids that reach it and, for the stop/strip rows,
adds a logits processor that forces a multi-paragraph answer.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from gc2bench.config import ConfigError
from gc2bench.evaluation.golden import (
    GOLDEN_DIR,
    REGENERATE,
    _importable_judge_code,
    golden_path,
    suite_entries,
    task_prompts,
)
from gc2bench.evaluation.lmms_model import GC2BenchLMM
from gc2bench.evaluation.suite import load_task, use_offline_hub
from gc2bench.prompting import LMMS_EVAL_VICUNA_TEMPLATE, PROTOCOLS, VICUNA_V1_SYSTEM, get_protocol, llava_mmbench_text

ENTRIES = {entry["task"]: entry for entry in suite_entries()}
# Leading blank line, two paragraphs, a would-be stop string and trailing spaces.
FORCED = "\nyes\n\nthe image is red ASSISTANT: no\n\n  "


class ForcedAnswer(LogitsProcessor):
    """Every step: only the next token of ``token_ids`` is possible (then EOS)."""

    def __init__(self, token_ids: list[int], eos: int):
        self.token_ids, self.eos, self.start = list(token_ids) + [eos], eos, None

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.token_ids[min(step, len(self.token_ids) - 1)]] = 0.0
        return forced


@pytest.fixture
def spy(tiny_adapter, monkeypatch):
    """Calls of the tiny model's ``generate`` (kwargs and input ids); ``spy.force(text)`` forces the answer."""
    model, original = tiny_adapter.model, tiny_adapter.model.generate

    class Spy:
        calls = []
        forced = tiny_adapter.tokenizer.encode("yes", add_special_tokens=False)  # short answers keep tests fast

        def force(self, text):
            self.forced = tiny_adapter.tokenizer.encode(text, add_special_tokens=False)

    state = Spy()

    def generate(*args, **kwargs):
        state.calls.append(
            {
                "kwargs": {
                    k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask", "mm_encoder_outputs")
                },
                "input_ids": kwargs["input_ids"].clone(),
                "attention_mask": kwargs["attention_mask"],
            }
        )
        if state.forced:
            kwargs["logits_processor"] = LogitsProcessorList(
                [ForcedAnswer(state.forced, tiny_adapter.tokenizer.eos_token_id)]
            )
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", generate)
    return state


def answer_requests(adapter, task_name: str, protocol: str, limit: int = 1):
    """lmms-eval's requests for ``task_name``'s fixture answered by ``GC2BenchLMM`` under ``protocol``."""
    use_offline_hub()
    with _importable_judge_code():
        task = load_task(ENTRIES[task_name], protocol)
    task.build_all_requests(limit=limit)
    lm = GC2BenchLMM(adapter, batch_size=1, protocol=protocol)
    lm.task_dict[task_name] = task.dataset
    return lm, task.instances, lm.generate_until(task.instances)


def prompt_text(adapter, call) -> str:
    ids = call["input_ids"][0][call["attention_mask"][0].bool()]
    return adapter.tokenizer.decode(ids[ids != adapter.image_token_id], skip_special_tokens=False)


# -- the table, row by row --------------------------------------------------------------------------


def test_system_line(tiny_adapter, spy, monkeypatch):
    answer_requests(tiny_adapter, "pope", "llava_eval")
    answer_requests(tiny_adapter, "pope", "lmms_eval")
    llava, lmms = (prompt_text(tiny_adapter, call).removeprefix("<s>").lstrip() for call in spy.calls)
    assert llava.startswith(f"{VICUNA_V1_SYSTEM} USER: \n") and llava.endswith(" ASSISTANT:")
    assert lmms.startswith("USER: \n") and "A chat between" not in lmms  # the tiny tokenizer's template
    # Without a tokenizer template lmms-eval falls back to its Vicuna template, which has the system line.
    monkeypatch.setattr(tiny_adapter.tokenizer, "chat_template", None)
    fallback = get_protocol("lmms_eval").render("Is it red?", 1, tiny_adapter)
    assert fallback.text == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. USER: <image>\n"
        "Is it red? ASSISTANT:"
    )
    assert fallback.template == "lmms-eval vicuna fallback"


def test_bos(tiny_adapter, spy):
    bos = tiny_adapter.tokenizer.bos_token_id
    answer_requests(tiny_adapter, "gqa", "llava_eval")
    answer_requests(tiny_adapter, "gqa", "lmms_eval")
    llava, lmms = (call["input_ids"][0][call["attention_mask"][0].bool()].tolist() for call in spy.calls)
    assert llava[0] == bos and llava.count(bos) == 1
    assert bos not in lmms  # the tiny tokenizer adds none, and lmms-eval adds none either


def test_bos_is_added_once_in_a_padded_batch(tiny_adapter):
    from gc2bench.models.adapter import with_bos

    ids = torch.tensor([[3, 3, 7, 8], [1, 5, 6, 9]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    new_ids, new_mask = with_bos(ids, mask, bos=1, pad=3)
    assert new_ids.tolist() == [[3, 3, 1, 7, 8], [3, 1, 5, 6, 9]]
    assert new_mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert with_bos(new_ids, new_mask, bos=1, pad=3)[0] is new_ids


@pytest.mark.parametrize("protocol, do_sample, temperature", [("lmms_eval", True, 0.2), ("llava_eval", False, None)])
def test_mmvet_decoding(tiny_adapter, spy, protocol, do_sample, temperature):
    lm, _, _ = answer_requests(tiny_adapter, "mmvet", protocol)
    kwargs = spy.calls[0]["kwargs"]
    assert (kwargs["do_sample"], kwargs["temperature"], kwargs["max_new_tokens"]) == (do_sample, temperature, 1024)
    assert lm.prompting["mmvet"]["generate_kwargs"] == kwargs


@pytest.mark.parametrize(
    "protocol, task, expected",
    [
        ("lmms_eval", "vizwiz_vqa_val", 1024),
        ("lmms_eval", "textvqa_val", 1024),
        ("lmms_eval", "gqa", 16),
        ("llava_eval", "vizwiz_vqa_val", 128),
        ("llava_eval", "textvqa_val", 128),
        ("llava_eval", "gqa", 128),
        ("llava_eval", "mmbench_en_dev", 1024),
        ("llava_eval", "scienceqa_img", 1024),
    ],
)
def test_max_new_tokens(tiny_adapter, spy, protocol, task, expected):
    answer_requests(tiny_adapter, task, protocol)
    assert spy.calls[0]["kwargs"]["max_new_tokens"] == expected


def test_exact_kwargs_reaching_generate(tiny_adapter, spy):
    eos = tiny_adapter.tokenizer.eos_token_id
    answer_requests(tiny_adapter, "pope", "lmms_eval")
    answer_requests(tiny_adapter, "pope", "llava_eval")
    lmms, llava = (call["kwargs"] for call in spy.calls)
    assert lmms == {
        "do_sample": False,
        "temperature": None,
        "top_p": 1.0,
        "num_beams": 1,
        "max_new_tokens": 128,
        "use_cache": True,
        "pad_token_id": eos,
        "eos_token_id": eos,
    }
    assert llava == {
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "num_beams": 1,
        "max_new_tokens": 128,
        "use_cache": True,
    }


@pytest.mark.parametrize("task", ["pope", "vizwiz_vqa_val", "mmbench_en_dev"])  # until "\n\n" / "ASSISTANT:"
def test_stop_strings_and_whitespace_of_a_forced_multi_paragraph_answer(tiny_adapter, spy, task):
    spy.force(FORCED)
    raw = tiny_adapter.tokenizer.decode(spy.forced, skip_special_tokens=True)
    assert raw != raw.strip() and "\n\n" in raw.strip() and "ASSISTANT:" in raw
    _, instances, lmms = answer_requests(tiny_adapter, task, "lmms_eval")
    assert instances[0].args[1]["until"]  # the task asks to stop …
    assert lmms == [raw]  # … and lmms-eval's llava_hf neither stops there nor strips
    _, _, llava = answer_requests(tiny_adapter, task, "llava_eval")
    assert llava == [raw.strip()]  # LLaVA: EOS only, then .strip()


LLAVA_HF_VICUNA_TEMPLATE = (  # llava-hf/llava-v1.6-vicuna-*-hf chat_template.json
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'text') %}{{ content['text'] + ' '}}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def test_a_template_that_drops_string_content_is_an_error_not_an_empty_prompt(tiny_adapter, monkeypatch):
    monkeypatch.setattr(tiny_adapter.tokenizer, "chat_template", LLAVA_HF_VICUNA_TEMPLATE)
    with pytest.raises(ValueError, match="renders 'USER: ASSISTANT:'.*use suite.protocol=llava_eval"):
        get_protocol("lmms_eval").render("Is it red?", 1, tiny_adapter)
    monkeypatch.setattr(tiny_adapter.processor, "chat_template", LLAVA_HF_VICUNA_TEMPLATE)
    assert tiny_adapter.prompt("Is it red?", 1) == "USER: <image>\nIs it red? ASSISTANT:"
    assert (
        get_protocol("llava_eval")
        .render("Is it red?", 1, tiny_adapter)
        .text.endswith("USER: <image>\nIs it red? ASSISTANT:")
    )


def test_context_whitespace_is_kept(tiny_adapter):
    for name in PROTOCOLS:
        assert "Is it red? \n ASSISTANT:" in get_protocol(name).render("Is it red? \n", 1, tiny_adapter).text


# -- prompt text per task -----------------------------------------------------------------------------


def test_llava_question_texts(tiny_adapter):
    golden = {p: {t: json.loads(golden_path(p, t).read_text()) for t in ENTRIES} for p in PROTOCOLS}
    llava = {t: g["documents"][0]["context"] for t, g in golden["llava_eval"].items()}
    lmms = {t: g["documents"][0]["context"] for t, g in golden["lmms_eval"].items()}
    assert llava["mmvet"] == "What color is the circle?"  # model_vqa: the bare question
    assert lmms["mmvet"].startswith("First please perform reasoning")
    assert llava["mmbench_en_dev"] == (
        "What color is the shape?\nA. red\nB. green\nC. blue\nD. black\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert llava["mmbench_cn_dev"].endswith("\n请直接回答选项字母。")
    assert llava["textvqa_val"] == "what does the sign say?\nAnswer the question using a single word or phrase."
    for task in ("vqav2_val", "gqa", "pope", "mme", "vizwiz_vqa_val", "scienceqa_img"):
        assert llava[task] == lmms[task]  # lmms-eval's task prompt is LLaVA's question file text here
    assert all(g["documents"][0]["prompt"].startswith(VICUNA_V1_SYSTEM) for g in golden["llava_eval"].values())


def test_mmbench_options_stop_at_the_first_missing_one():
    doc = {"question": "Q?", "hint": float("nan"), "A": "x", "B": "y", "C": "nan", "D": "z"}
    assert llava_mmbench_text(doc, {"post_prompt": "!"}) == "Q?\nA. x\nB. y!"
    assert llava_mmbench_text({**doc, "hint": "H"}, {}) == "H\nQ?\nA. x\nB. y"


def test_suite_entry_prompt_options_win_over_the_protocol(cache_dir):
    use_offline_hub()
    entry = {**ENTRIES["textvqa_val"], "ocr_tokens": True, "post_prompt": "\nShort answer."}
    task = load_task(entry, "llava_eval")
    text = task.doc_to_text(task.test_docs()[0])
    assert text == "what does the sign say?\nReference OCR token: stop\nShort answer."


# -- records, config, the copied lmms-eval rule ----------------------------------------------------------


def test_record_states_protocol_and_checkpoint_template(tiny_adapter, spy):
    llava, _, _ = answer_requests(tiny_adapter, "pope", "llava_eval")
    lmms, _, _ = answer_requests(tiny_adapter, "pope", "lmms_eval")
    assert llava.prompting["pope"]["name"] == "llava_eval" and llava.prompting["pope"]["template"] == "vicuna_v1"
    assert llava.prompting["pope"]["source"] == "llava/eval/model_vqa_loader.py"
    assert llava.prompting["pope"]["checkpoint_template"]["differs"] is True  # the tiny template has no system line
    assert lmms.prompting["pope"]["checkpoint_template"]["differs"] is False
    assert lmms.prompting["pope"]["template"] == "tokenizer chat template"
    assert llava.prompting["pope"]["answer"] == "stripped" and lmms.prompting["pope"]["answer"] == "as decoded"


def test_run_record_carries_the_protocol(tmp_path, cache_dir):
    from gc2bench.config import compose_run_config
    from gc2bench.run import run

    records = run(
        compose_run_config(
            [
                f"results_dir={tmp_path}",
                "suite=paper10_fixtures",
                "tasks=[pope]",
                "suite.protocol=llava_eval",
                "suite.limit=2",
            ]
        )
    )
    assert records[0]["protocol"] == "llava_eval"
    assert records[0]["prompting"]["generate_kwargs"]["max_new_tokens"] == 128
    assert records[0]["config"]["suite"]["protocol"] == "llava_eval"


def test_protocol_config_is_checked_before_loading(cache_dir):
    from gc2bench.config import compose_run_config
    from gc2bench.evaluation.suite import check_suite

    with pytest.raises(ConfigError, match="suite.protocol='nope' is not one of lmms_eval, llava_eval"):
        check_suite(compose_run_config(["suite.protocol=nope"]))
    with pytest.raises(ConfigError, match="task 'ok_vqa_val' has no LLaVA evaluation script"):
        check_suite(
            compose_run_config(
                ["suite.protocol=llava_eval", "~suite.tasks", "+suite.tasks={ok_vqa_val: {metric: exact_match}}"]
            )
        )
    assert compose_run_config([]).suite.protocol == "lmms_eval"


def test_every_experiment_uses_llava_eval():
    from gc2bench.config import compose_run_config, config_names

    for name in config_names("experiment"):
        assert compose_run_config([f"experiment={name}"]).suite.protocol == "llava_eval", name


def test_lmms_eval_rules_match_the_installed_llava_hf():
    import importlib.util

    source = Path(
        importlib.util.find_spec("lmms_eval").submodule_search_locations[0], "models", "simple", "llava_hf.py"
    ).read_text()
    assert re.search(r'^VICUNA_CHAT_TEMPLATE = "(.*)"$', source, re.M).group(1) == LMMS_EVAL_VICUNA_TEMPLATE
    assert 'do_sample = True if gen_kwargs["temperature"] > 0 else False' in source
    assert 'gen_kwargs["max_new_tokens"] = 1024' in source
    assert 'until = gen_kwargs.pop("until")' in source and ".split(" not in source.split("def generate_until")[1]


# -- golden prompt files -------------------------------------------------------------------------------


def test_golden_files_cover_ten_tasks_and_both_protocols():
    files = sorted(str(path.relative_to(GOLDEN_DIR)) for path in GOLDEN_DIR.glob("*/*.json"))
    assert files == sorted(f"{p}/{t}.json" for p in PROTOCOLS for t in ENTRIES) and len(files) == 20


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("task", list(ENTRIES))
def test_golden_prompt(tiny_adapter, cache_dir, protocol, task):
    expected = json.loads(golden_path(protocol, task).read_text())
    actual = json.loads(json.dumps(task_prompts(tiny_adapter, ENTRIES[task], protocol), ensure_ascii=False))
    assert len(actual["documents"]) == 2
    assert actual == expected, f"the {protocol} prompt of {task} changed; if deliberate: {REGENERATE}"


def test_onevision_prompts(cache_dir):
    from PIL import Image

    from gc2bench.compressors.none import NoCompression
    from gc2bench.models.tiny_onevision import load_tiny_onevision

    adapter = load_tiny_onevision(NoCompression(), dtype="float32", device="cpu")
    image = Image.new("RGB", (60, 40), (255, 0, 0))
    llava = adapter.generate(["Is it red?"], [[image]], protocol="llava_eval", max_new_tokens=1)[0]
    assert llava.prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        "Is it red?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert get_protocol("llava_eval").template_name(adapter) == "qwen_1_5"
    assert get_protocol("llava_eval").render("Q", 1, adapter).add_bos is False  # Qwen2 has no BOS to keep
    lmms = adapter.generate(["Is it red?"], [[image]], protocol="lmms_eval", max_new_tokens=1)[0]
    assert lmms.prompt == "<|im_start|>user <image>\nIs it red?<|im_end|>\n<|im_start|>assistant\n"


def test_lmms_eval_response_cache_key_names_the_protocol(tiny_adapter):
    keys = {str(GC2BenchLMM(tiny_adapter, protocol=name)) for name in PROTOCOLS}
    assert len(keys) == 2 and all(f"protocol={name}" in " ".join(keys) for name in PROTOCOLS)


# -- lmms_eval against lmms-eval's own llava_hf ----------------------------------------------------------


@pytest.mark.parametrize("task", ["pope", "textvqa_val", "mmbench_en_dev", "mmvet", "scienceqa_img"])
def test_lmms_eval_protocol_sends_what_lmms_evals_llava_hf_sends(tiny_adapter, tiny_path, spy, monkeypatch, task):
    """lmms-eval's real ``llava_hf`` model on the same checkpoint and requests: same input ids, same
    generation kwargs, same (forced, multi-paragraph) answers as gc2bench under ``lmms_eval``."""
    from lmms_eval.models.simple.llava_hf import LlavaHf

    spy.force(FORCED)
    _, _, ours = answer_requests(tiny_adapter, task, "lmms_eval", limit=2)
    reference = LlavaHf(pretrained=str(tiny_path), device="cpu", dtype="float32", device_map="cpu")
    theirs_calls, original = [], reference.model.generate

    def generate(**kwargs):
        theirs_calls.append(kwargs)
        kwargs["logits_processor"] = LogitsProcessorList([ForcedAnswer(spy.forced, reference.tokenizer.eos_token_id)])
        return original(**kwargs)

    monkeypatch.setattr(reference.model, "generate", generate)
    use_offline_hub()
    with _importable_judge_code():
        lmms_task = load_task(ENTRIES[task], "lmms_eval")
    lmms_task.build_all_requests(limit=2)
    reference.task_dict[task] = lmms_task.dataset
    theirs = reference.generate_until(sorted(lmms_task.instances, key=lambda inst: inst.args[3]))
    assert ours == theirs and len(ours) == 2
    scalar = (
        "do_sample",
        "temperature",
        "top_p",
        "num_beams",
        "max_new_tokens",
        "use_cache",
        "pad_token_id",
        "eos_token_id",
    )
    # llava_hf answers the longest prompt first, gc2bench in document order: compare the calls as sets.
    mine = sorted((call["input_ids"][0].tolist(), sorted(call["kwargs"].items())) for call in spy.calls)
    reference_calls = sorted(
        (call["input_ids"][0].tolist(), sorted((key, call[key]) for key in scalar)) for call in theirs_calls
    )
    assert mine == reference_calls
