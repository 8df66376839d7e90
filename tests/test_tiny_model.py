import torch
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

from gc2bench.models.tiny import TINY_SPEC, build_tiny_llava_next, tiny_llava_next_path


def _state(path):
    return LlavaNextForConditionalGeneration.from_pretrained(path).state_dict()


def test_save_load_round_trip_is_exact_and_deterministic(tmp_path, tiny_path):
    rebuilt = build_tiny_llava_next(tmp_path / "again", seed=0)
    first, second = _state(tiny_path), _state(rebuilt)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    other = _state(build_tiny_llava_next(tmp_path / "seed1", seed=1))
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])


def test_loaded_model_has_the_llava_next_structure(tiny_path):
    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_path)
    config = model.config
    assert config.model_type == "llava_next"
    assert config.vision_config.model_type == "clip_vision_model"
    assert config.text_config.model_type == "llama"
    assert config.image_grid_pinpoints == TINY_SPEC["grid_pinpoints"]
    assert model.model.image_newline.shape == (TINY_SPEC["text"]["hidden_size"],)
    processor = AutoProcessor.from_pretrained(tiny_path)
    ids = processor.tokenizer("Is there a cat? yes", add_special_tokens=False).input_ids
    assert processor.tokenizer.decode(ids) == "Is there a cat? yes"
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id


def test_cache_is_reused(tiny_path, cache_dir):
    stamp = (tiny_path / "model.safetensors").stat().st_mtime_ns
    assert tiny_llava_next_path(seed=0, cache_dir=cache_dir) == tiny_path
    assert (tiny_path / "model.safetensors").stat().st_mtime_ns == stamp
