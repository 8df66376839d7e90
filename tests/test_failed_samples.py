"""A sample that fails is recorded and skipped: never scored as a wrong answer."""

from gc2bench.evaluation.fixtures import SIZES
from gc2bench.evaluation.lmms_model import GC2BenchLMM
from gc2bench.evaluation.suite import evaluate_task, summarize, use_offline_hub


class FailsOnWidth:
    """The real tiny adapter, except that images of one width raise (like a corrupt file)."""

    def __init__(self, adapter, width):
        self.adapter, self.width = adapter, width
        self.compressor, self.name = adapter.compressor, adapter.name

    def generate(self, texts, images, **kwargs):
        if any(image.width == self.width for group in images for image in group):
            raise RuntimeError("cannot decode image")
        return self.adapter.generate(texts, images, **kwargs)


def test_failed_sample_is_recorded_and_excluded_from_the_metric(tiny_adapter, cache_dir):
    use_offline_hub()
    entry = {"task": "pope", "fixture": "pope", "metric": "pope_accuracy", "scale": 100}
    lm = GC2BenchLMM(FailsOnWidth(tiny_adapter, SIZES[1][0]), batch_size=2)
    result = evaluate_task(lm, entry)
    assert [f["doc_id"] for f in result.failures] == [1]
    assert "cannot decode image" in result.failures[0]["error"]
    assert [s["doc_id"] for s in result.samples] == [0, 2, 3, 4]
    correct = [s["answer"] == s["target"] for s in result.samples]
    assert result.metrics["pope_accuracy"] == sum(correct) / 4
    assert result.metrics["score"] == 100 * sum(correct) / 4
    _, efficiency = summarize(result.samples, result.failures, result.wall_s)
    assert efficiency["failed_samples"] == 1 and efficiency["samples"] == 4
