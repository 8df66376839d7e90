"""The decoder pruner's check of the installed transformers' decoder layers (issue: cache= in 5.24)."""

import types

import pytest
import transformers
from packaging.version import Version

from gc2bench.compressors.fastv import FastV
from gc2bench.errors import ModelLoadError
from gc2bench.models.decoder_pruning import DecoderPruner, UnsupportedDecoderError, cache_argument


@pytest.fixture()
def language_model(tiny_path):
    from transformers import LlavaNextForConditionalGeneration

    return LlavaNextForConditionalGeneration.from_pretrained(str(tiny_path)).model.language_model


def test_installed_transformers_cache_name(language_model):
    expected = "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"
    assert cache_argument(language_model) == expected


def _replace_forward(layer, forward):
    layer.forward = types.MethodType(forward, layer)


@pytest.mark.parametrize("cache_name", ["cache", "past_key_values"])
def test_either_cache_name_is_accepted(language_model, cache_name):
    namespace = {}
    exec(
        f"def forward(self, hidden_states, attention_mask=None, position_ids=None, {cache_name}=None, "
        "position_embeddings=None, **kwargs): pass",
        namespace,
    )
    _replace_forward(language_model.layers[0], namespace["forward"])
    assert cache_argument(language_model) == cache_name


@pytest.mark.parametrize("missing", ["position_embeddings", "position_ids", "attention_mask", "cache"])
def test_missing_argument_is_one_line_naming_the_version(language_model, missing):
    arguments = [a for a in ("attention_mask", "position_ids", "cache", "position_embeddings") if a != missing]
    namespace = {}
    exec(f"def forward(self, hidden_states, {', '.join(a + '=None' for a in arguments)}): pass", namespace)
    _replace_forward(language_model.layers[0], namespace["forward"])
    with pytest.raises(UnsupportedDecoderError) as raised:
        DecoderPruner(language_model, FastV(0.5, layer=2))
    assert isinstance(raised.value, ModelLoadError) and raised.value.exit_status == 2
    message = str(raised.value)
    assert "\n" not in message
    assert f"transformers {transformers.__version__}" in message
    assert ">=5.23,<=5.24" in message
    assert (missing if missing != "cache" else "cache or past_key_values") in message
    for handle_owner in language_model.layers:  # nothing was hooked
        assert not handle_owner._forward_pre_hooks


def test_missing_module_is_named(language_model):
    del language_model.rotary_emb
    with pytest.raises(UnsupportedDecoderError, match="lacks rotary_emb"):
        cache_argument(language_model)
