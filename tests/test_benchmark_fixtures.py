"""The ten paper benchmarks run through lmms-eval's own task definitions on local fixtures.

Each test evaluates a real lmms-eval task (its prompt, filters, metric and aggregation) on a
3–5 sample fixture in the task's hub schema, through ``GC2BenchLMM`` and the tiny LLaVA-NeXT,
and checks the headline against a score computed here, independently, from the logged answers.
Where the tiny model's answers would make a metric degenerate (all wrong), ``Scripted`` keeps the
tiny model running but replaces its answer texts, so the scoring rules are exercised for real.
API judges are replaced by a local stand-in server; without a key, judged tasks are skipped.
"""

import dataclasses
import json
import re
import statistics
import string
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gc2bench.config import ConfigError
from gc2bench.evaluation.fixtures import FIXTURES, GQA_IMAGES, SIZES, build_fixture, fixture_features, fixture_rows
from gc2bench.evaluation.lmms_model import GC2BenchLMM
from gc2bench.evaluation.suite import (
    JudgeFailed,
    TaskSkipped,
    evaluate_task,
    load_task,
    skip_reason,
    task_spec,
    use_offline_hub,
)

PAPER10 = {  # task → (fixture, headline metric, scale), as conf/suite/paper10_fixtures.yaml
    "vqav2_val": ("vqav2", "exact_match", 100),
    "gqa": ("gqa", "exact_match", 100),
    "vizwiz_vqa_val": ("vizwiz_vqa", "exact_match", 100),
    "scienceqa_img": ("scienceqa_img", "exact_match", 100),
    "textvqa_val": ("textvqa", "exact_match", 100),
    "pope": ("pope", "pope_f1_score", 100),
    "mme": ("mme", "mme_perception_score", 1),
    "mmbench_en_dev": ("mmbench_en", "gpt_eval_score", 1),
    "mmbench_cn_dev": ("mmbench_cn", "gpt_eval_score", 1),
    "mmvet": ("mmvet", "gpt_eval_score", 1),
}
JUDGE = "judge-under-test"
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}


def entry_for(task, **options):
    fixture, metric, scale = PAPER10[task]
    entry = {"task": task, "fixture": fixture, "metric": metric, "scale": scale}
    if task == "pope":
        entry["average_over"] = "category"
    if task.startswith("mmbench"):
        entry["judge"] = None
    if task == "mmvet":
        entry.update(judge=JUDGE, pre_prompt="")
    return {**entry, **options}


def evaluate(adapter, entry):
    use_offline_hub()
    return evaluate_task(GC2BenchLMM(adapter, batch_size=2), entry)


class Scripted:
    """The real tiny adapter (images encoded, stats recorded), answering ``answer(prompt, images)`` instead
    (``answer=None``: the model's own answers); records the prompts and image sizes it was given."""

    def __init__(self, adapter, answer=None):
        self.adapter, self.answer = adapter, answer
        self.compressor, self.name = adapter.compressor, adapter.name
        self.prompts, self.image_sizes = [], []

    def generate(self, texts, images, **kwargs):
        results = self.adapter.generate(texts, images, **kwargs)
        self.prompts += texts
        self.image_sizes += [[image.size for image in group] for group in images]
        if self.answer is None:
            return results
        return [
            dataclasses.replace(result, text=self.answer(text, group))
            for result, text, group in zip(results, texts, images)
        ]


class Untouchable:
    """An adapter that must not be used (a skipped task never reaches the model)."""

    compressor = type("NoCompressor", (), {"name": "none", "params": staticmethod(lambda: {})})()
    name = "untouchable"

    def generate(self, *args, **kwargs):
        raise AssertionError("the model ran for a skipped task")


# -- independent reference scores ------------------------------------------------------------------


def normalize(answer: str) -> str:
    """The official VQA answer normalization, as far as the fixtures' answers need it."""
    words = answer.lower().translate(str.maketrans("", "", string.punctuation)).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ("a", "an", "the"))


def vqa_accuracy(answer: str, humans: list[str]) -> float:
    """Mean over the 10 leave-one-out annotator subsets of min(1, #matches / 3)."""
    answer, humans = normalize(answer), [normalize(h) for h in humans]
    return statistics.fmean(
        min(1.0, sum(h == answer for j, h in enumerate(humans) if j != i) / 3) for i in range(len(humans))
    )


def pope_f1(pairs) -> float:
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def mme_label(answer: str) -> str:
    answer = answer.lower().strip().replace(".", "")
    if answer in ("yes", "no"):
        return answer
    return "yes" if "yes" in answer[:4] else "no" if "no" in answer[:4] else "other"


def mme_score(rows, answers, categories) -> float:
    """Per category: mean over images of (accuracy + accuracy+) in %; summed over categories."""
    by_image = {}
    for row, answer in zip(rows, answers):
        if row["category"] in categories:
            by_image.setdefault((row["category"], row["question_id"]), []).append(
                mme_label(answer) == row["answer"].lower()
            )
    per_category = {}
    for (category, _), correct in by_image.items():
        per_category.setdefault(category, []).append(100 * sum(correct) / len(correct) + 100 * all(correct))
    return sum(statistics.fmean(scores) for scores in per_category.values())


def mmbench_letter(answer: str, row: dict):
    """The option a (lowercase-word or single-letter) answer picks: a letter, or the one option it names."""
    answer = answer.strip()
    if answer in ("A", "B", "C", "D"):
        return answer
    named = [k for k in "ABCD" if row[k] and row[k].lower() in answer.lower()]
    return named[0] if len(named) == 1 else None


def mmbench_circular(rows, answers) -> float:
    """% of questions answered right in every circular variant (index mod 10⁶)."""
    hits = {}
    for row, answer in zip(rows, answers):
        hits.setdefault(row["index"] % 1_000_000, []).append(mmbench_letter(answer, row) == row["answer"])
    return 100 * statistics.fmean(all(v) for v in hits.values())


def reference_score(task: str, answers: list[str], judge_scores=None) -> float:
    """The headline (before ``scale``) computed here from the fixture rows and the logged answers."""
    rows = fixture_rows(PAPER10[task][0])
    if task == "vqav2_val":
        return statistics.fmean(vqa_accuracy(a, [h["answer"] for h in r["answers"]]) for r, a in zip(rows, answers))
    if task in ("vizwiz_vqa_val", "textvqa_val"):
        return statistics.fmean(vqa_accuracy(a, r["answers"]) for r, a in zip(rows, answers))
    if task == "gqa":
        return statistics.fmean(normalize(a) == normalize(r["answer"]) for r, a in zip(rows, answers))
    if task == "scienceqa_img":
        return statistics.fmean(
            a.strip().lower() == "abcd"[r["answer"]] or (len(a) > 1 and a[1] == "." and a[0] == "ABCD"[r["answer"]])
            for r, a in zip(rows, answers)
        )
    if task == "pope":
        by_category = {}
        for r, a in zip(rows, answers):
            by_category.setdefault(r["category"], []).append((a.lower().strip(), r["answer"]))
        return statistics.fmean(pope_f1(pairs) for pairs in by_category.values())
    if task == "mme":
        return mme_score(rows, answers, {"existence"})
    if task.startswith("mmbench"):
        return mmbench_circular(rows, answers)
    if task == "mmvet":
        return 100 * statistics.fmean(judge_scores[r["question"]] for r in rows)
    raise KeyError(task)


# -- a local stand-in for the API judges ---------------------------------------------------------


@pytest.fixture
def judge_server(monkeypatch):
    """An OpenAI-compatible chat endpoint on localhost; ``server.reply(prompt)`` sets its answers."""
    calls = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(body)
            content = server.reply(body["messages"][-1]["content"])
            payload = json.dumps(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.calls, server.reply = calls, lambda prompt: "0"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    for name, value in {
        "API_TYPE": "openai",
        "OPENAI_API_KEY": "test-key",
        "OPENAI_API_URL": url,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }.items():
        monkeypatch.setenv(name, value)
    yield server
    server.shutdown()


MMVET_SCORES = {
    "What color is the circle?": 1.0,
    "What shape is shown and what is its color?": 0.5,
    "How many circles are in the image?": 0.2,
}


def mmvet_reply(prompt: str) -> str:
    question = next(q for q in MMVET_SCORES if f"\n{q} |" in prompt)
    return str(MMVET_SCORES[question])


# -- the fixtures themselves ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_is_small_and_in_the_hub_schema(name, cache_dir):
    import datasets

    path = build_fixture(name)
    dataset = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert 3 <= len(dataset) <= 5 and path.stat().st_size < 20_000
    assert list(dataset.features) == list(fixture_rows(name)[0])
    expected = fixture_features(name)
    if expected is not None:
        assert dataset.features == expected
    assert build_fixture(name) == path  # built once, then reused


# -- every task, real tiny answers ---------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(PAPER10))
def test_task_scores_the_tiny_models_answers_with_its_own_metric(task, tiny_adapter, cache_dir, request):
    entry = entry_for(task)
    if task == "mmvet":
        request.getfixturevalue("judge_server").reply = mmvet_reply
    adapter = Scripted(tiny_adapter)
    result = evaluate(adapter, entry)
    rows = fixture_rows(PAPER10[task][0])
    assert [s["doc_id"] for s in result.samples] == list(range(len(rows)))
    answers = [s["answer"] for s in result.samples]
    # The reference scorers cover plain answers; the tiny model answers single lowercase words.
    assert all(re.fullmatch(r"[a-z0-9 ]*", a) for a in answers), answers
    assert all(s["visual_tokens_before"] > 0 for s in result.samples)
    contributing = [r["category"] == "existence" for r in rows] if task == "mme" else [True] * len(rows)
    assert [s["metric_value"] is not None for s in result.samples] == contributing
    expected = reference_score(task, answers, MMVET_SCORES)
    assert result.metrics["score"] == pytest.approx(PAPER10[task][2] * expected)
    assert result.metrics["scale"] == PAPER10[task][2]
    upper = {"mme": 2000, "mmbench_en_dev": 100, "mmbench_cn_dev": 100, "mmvet": 100}.get(task, 1)
    assert 0 <= result.metrics["score"] / PAPER10[task][2] <= upper
    if task == "gqa":  # documents get their images from the image table, by imageId
        sizes = {image_id: size for image_id, size, _, _ in GQA_IMAGES}
        assert adapter.image_sizes == [[sizes[row["imageId"]]] for row in rows]
    if task == "textvqa_val":  # OCR tokens are off by default
        assert not any("Reference OCR token" in prompt for prompt in adapter.prompts)
    if task == "vizwiz_vqa_val":
        assert adapter.prompts[0].startswith("What color is this?\nWhen the provided information is insufficient")


# -- scoring rules with scripted answers --------------------------------------------------------------


def test_pope_headline_is_f1_per_category_averaged(tiny_adapter, cache_dir):
    answers = {SIZES[0]: "yes", SIZES[1]: "yes", SIZES[2]: "no", SIZES[3]: "no", SIZES[4]: "yes"}
    result = evaluate(Scripted(tiny_adapter, lambda text, images: answers[images[0].size]), entry_for("pope"))
    # adversarial: TP + TN → F1 1; popular: one FP → 0; random: TP + FN → 2/3. Pooled F1 would be 2/3.
    assert result.metrics["score"] == pytest.approx(100 * (1 + 0 + 2 / 3) / 3)
    answers = [s["answer"] for s in result.samples]
    assert result.metrics["score"] == pytest.approx(100 * reference_score("pope", answers))
    assert result.metrics["pope_f1_score"] == pytest.approx(2 / 3)
    assert result.metrics["pope_f1_score[category=random]"] == pytest.approx(2 / 3)
    assert result.metrics["metric"] == "pope_f1_score (mean over category)"
    assert [s["group"] for s in result.samples] == [r["category"] for r in fixture_rows("pope")]


@pytest.mark.parametrize(
    "metric, expected", [("mme_perception_score", 200.0), ("mme_perception_score+mme_cognition_score", 250.0)]
)
def test_mme_perception_or_perception_plus_cognition(metric, expected, tiny_adapter, cache_dir):
    answers = {"Is there a circle": "Yes", "Is there a square": "No", "Is the shape": "yes", "Could this": "Yes."}
    adapter = Scripted(tiny_adapter, lambda text, images: next(a for q, a in answers.items() if q in text))
    result = evaluate(adapter, entry_for("mme", metric=metric))
    # existence: both right → 100 + 100; commonsense_reasoning: one of two → 50 + 0.
    assert result.metrics["score"] == expected
    rows, logged = fixture_rows("mme"), [s["answer"] for s in result.samples]
    categories = {"existence"} | ({"commonsense_reasoning"} if "cognition" in metric else set())
    assert result.metrics["score"] == mme_score(rows, logged, categories)
    assert all("Please answer yes or no" not in p and p.endswith("single word or phrase.") for p in adapter.prompts)


def mmbench_answers(text, images):
    if "A. square" in text or "A. 正方形" in text:  # the circular variant of question 1 (right answer: A)
        return "The answer is C" if "square" in text else "A"
    for question, answer in [
        ("color", "A"),
        ("颜色", "A"),
        ("Which shape", "B"),
        ("什么形状", "B"),
        ("How many", "one"),
        ("几个", "一个"),
    ]:
        if question in text:
            return answer
    raise AssertionError(text)


@pytest.mark.parametrize("task, expected", [("mmbench_en_dev", 100 * 2 / 3), ("mmbench_cn_dev", 100.0)])
def test_mmbench_static_scoring_is_circular(task, expected, tiny_adapter, cache_dir):
    result = evaluate(Scripted(tiny_adapter, mmbench_answers), entry_for(task))
    # EN: question 1 is right but its circular variant is not, so it counts as wrong; "one" names option A.
    assert result.metrics["score"] == pytest.approx(expected)
    assert result.metrics["score"] == pytest.approx(reference_score(task, [s["answer"] for s in result.samples]))


def test_mmbench_with_judge_asks_the_configured_model(tiny_adapter, cache_dir, judge_server):
    judge_server.reply = lambda prompt: "A"
    entry = entry_for("mmbench_en_dev", judge=JUDGE)
    result = evaluate(Scripted(tiny_adapter, lambda text, images: "hmm"), entry)
    # No option can be read from "hmm": the judge says A each time, right for questions 0 and 2 only.
    assert result.metrics["score"] == pytest.approx(100 * 2 / 3)
    assert judge_server.calls and {call["model"] for call in judge_server.calls} == {JUDGE}


def test_scienceqa_reads_the_option_letter_like_llava(tiny_adapter, cache_dir):
    answers = {"Which shape": "B", "What color": "C. blue", "describes": "b", "filled": "The answer is A"}
    adapter = Scripted(tiny_adapter, lambda text, images: next(a for q, a in answers.items() if q in text))
    result = evaluate(adapter, entry_for("scienceqa_img"))
    assert result.metrics["score"] == 50.0  # "B" and "C. blue" count; "b" and a sentence do not
    assert "Context: The picture shows one coloured shape.\n" in adapter.prompts[1]
    assert "A. red\nB. green\nC. blue" in adapter.prompts[1]


def test_textvqa_with_ocr_tokens_and_partial_credit(tiny_adapter, cache_dir):
    answers = {"sign say": "STOP.", "number": "24", "word": "exlt", "open or closed": "closed"}
    adapter = Scripted(tiny_adapter, lambda text, images: next(a for q, a in answers.items() if q in text))
    result = evaluate(adapter, entry_for("textvqa_val", ocr_tokens=True))
    # "exlt" agrees with 1 of 10 annotators: 0.3 (VQA accuracy over leave-one-out subsets).
    assert result.metrics["score"] == pytest.approx(100 * (1 + 1 + 0.3 + 0) / 4)
    assert adapter.prompts[0] == (
        "What does the sign say?\nReference OCR token: stop\nAnswer the question using a single word or phrase."
    )
    assert "Reference OCR token: cafe, 24" in adapter.prompts[1]


# -- judged tasks without a key --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, options",
    [
        ("mmvet", {}),
        ("mmbench_en_dev", {"judge": "gpt-4o-2024-11-20"}),
        ("mmbench_cn_dev", {"judge": "gpt-4o-2024-11-20"}),
    ],
)
def test_judged_task_without_key_is_skipped_before_the_model_runs(task, options, monkeypatch, cache_dir):
    for name in ("OPENAI_API_KEY", "AZURE_API_KEY", "AZURE_ENDPOINT", "API_TYPE"):
        monkeypatch.delenv(name, raising=False)
    entry = entry_for(task, **options)
    reason = skip_reason(entry)
    assert reason and "OPENAI_API_KEY is not set" in reason and entry["judge"] in reason
    with pytest.raises(TaskSkipped) as skipped:
        evaluate(Untouchable(), entry)
    assert skipped.value.reason == reason
    monkeypatch.setenv("API_TYPE", "azure")
    assert "AZURE_API_KEY and AZURE_ENDPOINT are not set" in skip_reason(entry)
    monkeypatch.setenv("API_TYPE", "bedrock")
    assert "does not support API_TYPE=bedrock" in skip_reason(entry)


def test_mmbench_judge_null_needs_no_key_and_no_judge_key_means_lmms_evals_judge(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("MODEL_VERSION", raising=False)
    assert skip_reason(entry_for("mmbench_en_dev")) is None
    assert skip_reason(entry_for("mmbench_cn_dev")) is None
    lmms_eval_default = {"task": "mmbench_en_dev", "fixture": "mmbench_en", "metric": "gpt_eval_score"}
    assert "API judge (gpt-4o-2024-11-20, API_TYPE=openai)" in skip_reason(lmms_eval_default)
    assert "judge: null scores it by static option matching" in skip_reason(lmms_eval_default)
    assert isinstance(task_spec(lmms_eval_default), dict) and "metric_list" not in task_spec(lmms_eval_default)


def test_mmvet_definition_loads_offline(monkeypatch, cache_dir):
    """Prompt and documents load with no judge reachable (lmms-eval's MM-Vet code wants some key to import)."""
    monkeypatch.setenv("OPENAI_API_KEY", "placeholder-never-sent")
    use_offline_hub()
    row = fixture_rows("mmvet")[0]
    bare = load_task(entry_for("mmvet"))
    assert bare.doc_to_text(bare.test_docs()[0]) == row["question"]
    default = load_task({k: v for k, v in entry_for("mmvet").items() if k != "pre_prompt"})
    assert default.doc_to_text(default.test_docs()[0]).startswith("First please perform reasoning")
    assert default.doc_to_text(default.test_docs()[0]).endswith(row["question"])


def test_mmvet_judge_failure_is_an_error_not_a_zero(tiny_adapter, cache_dir, judge_server):
    judge_server.reply = lambda prompt: ""
    with pytest.raises(JudgeFailed, match="returned no score for documents \\[0, 1, 2\\]"):
        evaluate(tiny_adapter, entry_for("mmvet"))


# -- entry validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"task": "pope", "metric": "pope_f1_score", "ocr_tokens": True}, "ocr_tokens applies to TextVQA"),
        ({"task": "textvqa_val", "metric": "exact_match", "ocr_tokens": "yes"}, "must be true or false"),
        ({"task": "mmvet", "metric": "gpt_eval_score", "judge": None}, "scored by an API judge only"),
        ({"task": "gqa", "metric": "exact_match", "judge": "gpt-4"}, "judge applies to MMBench and MM-Vet"),
        ({"task": "pope", "metric": "pope_f1_score", "colour": 1}, "unknown key(s) ['colour']"),
        ({"task": "pope", "metric": "pope_f1_score+", "scale": 100}, "is not a metric or a sum"),
    ],
)
def test_bad_entries_are_refused_with_the_key_named(entry, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        task_spec(entry)


def test_unknown_metric_is_refused(tiny_adapter, cache_dir):
    with pytest.raises(ConfigError, match="'pope_f2' is not one of its metrics"):
        evaluate(tiny_adapter, entry_for("pope", metric="pope_f2", average_over=None))
