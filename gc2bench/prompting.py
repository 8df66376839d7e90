"""Evaluation protocols: how a benchmark question becomes a prompt and how the answer is decoded.

``suite.protocol`` names one (docs/protocols.md describes both, line by line):

- ``lmms_eval``: what lmms-eval 0.7.3's ``llava_hf`` model does (lmms_eval/models/simple/llava_hf.py):
  the task's own prompt text, ``<image>`` lines in front when the context has none, the
  tokenizer's chat template (else lmms-eval's Vicuna fallback) on a string message, the tokens
  the tokenizer adds, ``max_new_tokens`` 1024 unless the task sets it, sampling exactly when the
  task's temperature is > 0 (its ``do_sample`` is ignored), ``until`` ignored, answers unstripped.
- ``llava_eval``: what the GlobalCom² papers ran, the original LLaVA evaluation scripts
  (scripts/v1_5/eval/*.sh → llava/eval/model_vqa_loader.py, model_vqa.py, model_vqa_science.py,
  model_vqa_mmbench.py with ``--conv-mode vicuna_v1 --temperature 0``): the vicuna_v1
  conversation with its system line, ``<image>\\n`` before the question, BOS kept, LLaVA's
  question suffixes, greedy decoding with the script's ``max_new_tokens`` (128 for
  model_vqa_loader, 1024 for the others), no stop string but EOS, the answer stripped.

A protocol renders the prompt itself: where the checkpoint's chat template renders something
else, the protocol's text is used and ``describe`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gc2bench.config import ConfigError

IMAGE_PLACEHOLDER = "<image>"
DEFAULT_PROTOCOL = "lmms_eval"

# lmms_eval/models/simple/llava_hf.py:31, used when the tokenizer has no chat template.
LMMS_EVAL_VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if loop.index0 == 0 %}A chat between a curious user and an artificial "
    "intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. "
    "USER: {{ message['content'] }} {% elif message['role'] == 'user' %}USER: {{ message['content'] }} {% else %} "
    "ASSISTANT: {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'ASSISTANT:' }}{% endif %}"
)
# llava/conversation.py:242-252 (conv_vicuna_v1, SeparatorStyle.TWO: system + sep, "ROLE: message" + sep,
# the empty assistant turn as "ROLE:").
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# LLaVA-NeXT's conv_qwen_1_5 (llava/conversation.py of LLaVA-VL/LLaVA-NeXT, SeparatorStyle.CHATML), the
# template LLaVA-OneVision was trained and evaluated with; the GlobalCom² repository has no OneVision path.
QWEN_1_5_SYSTEM = "<|im_start|>system\nYou are a helpful assistant."

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
LETTER_ANSWER = "\nAnswer with the option's letter from the given choices directly."
LETTER_ANSWER_CN = "\n请直接回答选项字母。"
UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."


def benchmark(task: str) -> str | None:
    """The paper benchmark an lmms-eval task belongs to (vqav2, gqa, …, mmbench_cn, mmvet), or None."""
    if task.startswith("mmbench"):
        return "mmbench_cn" if "_cn" in task else "mmbench_en"
    for name in ("vqav2", "gqa", "vizwiz", "scienceqa", "textvqa", "pope", "mmvet"):
        if task.startswith(name):
            return name
    return "mme" if task.startswith("mme") else None


def _is_none(value) -> bool:
    """llava/eval/model_vqa_mmbench.py:33-42 (None, NaN, "nan" or "none" in any case)."""
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    return isinstance(value, str) and value.lower() in ("nan", "none")


def llava_mmbench_text(doc, lmms_eval_specific_kwargs=None) -> str:
    """An MMBench question as llava/eval/model_vqa_mmbench.py:71-99 builds it (hint, question, then
    ``A. option`` lines up to the first missing option), then the suffix (``post_prompt``)."""
    kwargs = lmms_eval_specific_kwargs or {}
    question = doc["question"]
    if not _is_none(doc.get("hint")):
        question = doc["hint"] + "\n" + question
    for letter in "ABCD":  # model_vqa_mmbench.py:19,44-51: options A-D up to the first missing one
        if letter not in doc or _is_none(doc[letter]):
            break
        question += "\n" + letter + ". " + str(doc[letter])
    return kwargs.get("pre_prompt", "") + question + kwargs.get("post_prompt", "")


def llava_textvqa_text(doc, lmms_eval_specific_kwargs=None) -> str:
    """A TextVQA question as in LLaVA's llava_textvqa_val_v051_ocr.jsonl: the question as annotated
    (lmms-eval capitalises it, textvqa/utils.py:54), the "Reference OCR token:" line only with ``ocr``
    (the GlobalCom² fork's model_vqa_loader.py:48-49 drops that line), then the suffix."""
    kwargs = lmms_eval_specific_kwargs or {}
    ocr = f"\nReference OCR token: {', '.join(doc['ocr_tokens'])}" if kwargs.get("ocr") else ""
    return kwargs.get("pre_prompt", "") + doc["question"] + ocr + kwargs.get("post_prompt", "")


@dataclass(frozen=True)
class TaskRule:
    """What a protocol does on one benchmark: prompt text and decoding."""

    script: str  # where it comes from (the LLaVA script, or lmms-eval's task)
    max_new_tokens: int | None  # None: the task's, else the protocol's default
    prompt: dict = field(default_factory=dict)  # lmms_eval_specific_kwargs defaults (pre_prompt, post_prompt)
    doc_to_text: object = None  # a replacement for the task's doc_to_text


LLAVA_RULES = {
    # scripts/v1_5/eval/{vqav2,gqa,vizwiz,textvqa,pope,mme}.sh → model_vqa_loader (max_new_tokens default 128).
    "vqav2": TaskRule("llava/eval/model_vqa_loader.py", 128, {"pre_prompt": "", "post_prompt": SHORT_ANSWER}),
    "gqa": TaskRule("llava/eval/model_vqa_loader.py", 128, {"pre_prompt": "", "post_prompt": SHORT_ANSWER}),
    "vizwiz": TaskRule(
        "llava/eval/model_vqa_loader.py", 128, {"pre_prompt": "", "post_prompt": UNANSWERABLE + SHORT_ANSWER}
    ),
    "textvqa": TaskRule(
        "llava/eval/model_vqa_loader.py", 128, {"pre_prompt": "", "post_prompt": SHORT_ANSWER}, llava_textvqa_text
    ),
    "pope": TaskRule("llava/eval/model_vqa_loader.py", 128, {"pre_prompt": "", "post_prompt": SHORT_ANSWER}),
    "mme": TaskRule("llava/eval/model_vqa_loader.py", 128, {"pre_prompt": "", "post_prompt": SHORT_ANSWER}),
    # scripts/v1_5/eval/sqa.sh → model_vqa_science --single-pred-prompt (max_new_tokens=1024, line 80).
    "scienceqa": TaskRule("llava/eval/model_vqa_science.py", 1024, {"pre_prompt": "", "post_prompt": LETTER_ANSWER}),
    # scripts/v1_5/eval/mmbench{,_cn}.sh → model_vqa_mmbench --single-pred-prompt [--lang cn] (1024, line 120).
    "mmbench_en": TaskRule(
        "llava/eval/model_vqa_mmbench.py", 1024, {"pre_prompt": "", "post_prompt": LETTER_ANSWER}, llava_mmbench_text
    ),
    "mmbench_cn": TaskRule(
        "llava/eval/model_vqa_mmbench.py", 1024, {"pre_prompt": "", "post_prompt": LETTER_ANSWER_CN}, llava_mmbench_text
    ),
    # scripts/v1_5/eval/mmvet.sh → model_vqa (the bare question, max_new_tokens=1024, line 71).
    "mmvet": TaskRule("llava/eval/model_vqa.py", 1024, {"pre_prompt": "", "post_prompt": ""}),
}


@dataclass
class Rendered:
    """A prompt as the model receives it: ``text`` (with one ``<image>`` per image), whether a BOS
    id is put in front when the tokenizer adds none, and which template made it."""

    text: str
    add_bos: bool
    template: str


class Protocol:
    name: str = ""

    def task_rule(self, task: str) -> TaskRule:
        raise NotImplementedError

    def check_task(self, task: str) -> None:
        """A ConfigError when the protocol does not define ``task``."""
        self.task_rule(task)

    def prompt_options(self, task: str) -> tuple[dict, object]:
        """(lmms_eval_specific_kwargs defaults, doc_to_text replacement or None) for ``task``."""
        rule = self.task_rule(task)
        return dict(rule.prompt), rule.doc_to_text

    def render(self, context: str, num_images: int, adapter) -> Rendered:
        raise NotImplementedError

    def generate_kwargs(self, task: str, task_kwargs: dict) -> tuple[dict, list[str]]:
        """(kwargs for transformers ``generate`` from the task's generation_kwargs, stop strings applied
        to the decoded answer). Token ids come with ``bind``."""
        raise NotImplementedError

    def bind(self, gen_kwargs: dict, tokenizer) -> dict:
        """``gen_kwargs`` with the token ids the protocol passes (none unless a protocol says so)."""
        return dict(gen_kwargs)

    def postprocess(self, text: str, until: list[str]) -> str:
        raise NotImplementedError

    def describe(self, task: str, adapter=None) -> dict:
        rule = self.task_rule(task)
        info = {"name": self.name, "source": rule.script}
        if adapter is not None:
            info["template"] = self.template_name(adapter)
        return info

    def template_name(self, adapter) -> str:
        raise NotImplementedError


class LmmsEvalProtocol(Protocol):
    """lmms-eval 0.7.3 ``llava_hf`` (lmms_eval/models/simple/llava_hf.py:267-389)."""

    name = "lmms_eval"

    def task_rule(self, task: str) -> TaskRule:
        return TaskRule("lmms_eval/models/simple/llava_hf.py (the task's own prompt and generation_kwargs)", None)

    def prompt_options(self, task: str) -> tuple[dict, object]:
        return {}, None

    def template_name(self, adapter) -> str:
        return "tokenizer chat template" if adapter.tokenizer.chat_template else "lmms-eval vicuna fallback"

    def render(self, context: str, num_images: int, adapter) -> Rendered:
        if IMAGE_PLACEHOLDER not in context and num_images:  # llava_hf.py:318-321
            context = " ".join([IMAGE_PLACEHOLDER] * num_images) + "\n" + context
        tokenizer = adapter.tokenizer
        template = tokenizer.chat_template or LMMS_EVAL_VICUNA_TEMPLATE  # llava_hf.py:326-334
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": context}], tokenize=False, add_generation_prompt=True, chat_template=template
        )
        if context not in text:
            # llava-hf's templates read content as a list of parts: a string renders as "USER: ASSISTANT:".
            raise ValueError(
                f"suite.protocol=lmms_eval: the tokenizer's chat template drops a string message "
                f"(it renders {text!r}), so lmms-eval's llava_hf would send no question; "
                f"use suite.protocol=llava_eval"
            )
        return Rendered(text, add_bos=False, template=self.template_name(adapter))

    def generate_kwargs(self, task: str, task_kwargs: dict) -> tuple[dict, list[str]]:
        kwargs = dict(task_kwargs)
        kwargs.pop("until", None)  # llava_hf.py:307-308 pops it and never applies it
        temperature = kwargs.get("temperature", 0)  # llava_hf.py:353-361: the task's do_sample is not read
        do_sample = temperature > 0
        return {
            "do_sample": do_sample,
            "temperature": temperature if do_sample else None,
            "top_p": kwargs.get("top_p"),
            "num_beams": kwargs.get("num_beams", 1),
            "max_new_tokens": kwargs.get("max_new_tokens", 1024),
            "use_cache": True,
        }, []

    def bind(self, gen_kwargs: dict, tokenizer) -> dict:
        eos = tokenizer.eos_token_id  # llava_hf.py:371-372
        return {**gen_kwargs, "pad_token_id": eos, "eos_token_id": eos}

    def postprocess(self, text: str, until: list[str]) -> str:
        return text  # llava_hf.py:378: batch_decode(skip_special_tokens=True), nothing else


class LlavaEvalProtocol(Protocol):
    """The LLaVA evaluation scripts the GlobalCom² papers ran (``--conv-mode vicuna_v1 --temperature 0``)."""

    name = "llava_eval"

    def task_rule(self, task: str) -> TaskRule:
        rule = LLAVA_RULES.get(benchmark(task))
        if rule is None:
            raise ConfigError(
                f"suite.protocol=llava_eval: task {task!r} has no LLaVA evaluation script "
                f"(llava_eval defines {', '.join(sorted(LLAVA_RULES))}); use suite.protocol=lmms_eval"
            )
        return rule

    def template_name(self, adapter) -> str:
        return "qwen_1_5" if _is_onevision(adapter) else "vicuna_v1"

    def render(self, context: str, num_images: int, adapter) -> Rendered:
        question = context
        if IMAGE_PLACEHOLDER in question:  # model_vqa_science.py:44
            question = question.replace(IMAGE_PLACEHOLDER, "").strip()
        question = (IMAGE_PLACEHOLDER + "\n") * num_images + question  # model_vqa*.py: DEFAULT_IMAGE_TOKEN + '\n' + qs
        if _is_onevision(adapter):  # Qwen2's tokenizer has no BOS, so tokenizer_image_token keeps none
            text = f"{QWEN_1_5_SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
            return Rendered(text, add_bos=False, template=self.template_name(adapter))
        text = f"{VICUNA_V1_SYSTEM} USER: {question} ASSISTANT:"
        # tokenizer_image_token (llava/mm_utils.py:185-204) keeps the BOS Vicuna's Llama tokenizer puts first.
        return Rendered(text, add_bos=True, template=self.template_name(adapter))

    def generate_kwargs(self, task: str, task_kwargs: dict) -> tuple[dict, list[str]]:
        rule = self.task_rule(task)
        # model_vqa*.py: do_sample = temperature > 0 with --temperature 0, top_p None, num_beams 1, use_cache.
        return {
            "do_sample": False,
            "temperature": None,
            "top_p": None,
            "num_beams": 1,
            "max_new_tokens": rule.max_new_tokens,
            "use_cache": True,
        }, []

    def postprocess(self, text: str, until: list[str]) -> str:
        return text.strip()  # model_vqa*.py: batch_decode(output_ids, skip_special_tokens=True)[0].strip()


def _is_onevision(adapter) -> bool:
    return getattr(adapter.config, "model_type", "") == "llava_onevision"


PROTOCOLS = {"lmms_eval": LmmsEvalProtocol(), "llava_eval": LlavaEvalProtocol()}


def get_protocol(name: str | None) -> Protocol:
    """The protocol called ``name`` (None: the default, lmms_eval); a ConfigError names a bad one."""
    name = DEFAULT_PROTOCOL if name is None else name
    if name not in PROTOCOLS:
        raise ConfigError(f"suite.protocol={name!r} is not one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def checkpoint_prompt(adapter, question: str, num_images: int) -> str | None:
    """What the checkpoint's own (processor) chat template makes of ``question``, or None without one."""
    try:
        return adapter.prompt(question, num_images)
    except Exception:  # no template, or one that cannot render this message
        return None


def prompting_record(protocol: Protocol, task: str, adapter, context: str, num_images: int, gen_kwargs: dict) -> dict:
    """What a task's record says about prompting: the protocol, its template, the exact ``generate``
    kwargs, stop strings and answer post-processing, one rendered prompt, and whether the
    checkpoint's own chat template would have rendered that question differently (the protocol's
    prompt is the one used)."""
    rendered = protocol.render(context, num_images, adapter)
    own = checkpoint_prompt(adapter, context.replace(IMAGE_PLACEHOLDER, "").strip(), num_images)
    return {
        **protocol.describe(task, adapter),
        "generate_kwargs": protocol.bind(gen_kwargs, adapter.tokenizer),
        "stop_strings": [],
        "answer": "stripped" if isinstance(protocol, LlavaEvalProtocol) else "as decoded",
        "bos": "kept" if rendered.add_bos else "as the tokenizer adds it",
        "example_prompt": rendered.text,
        "checkpoint_template": {"prompt": own, "differs": own != rendered.text},
    }
