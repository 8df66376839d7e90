"""Pruning image tokens inside a transformers decoder (Llama, Qwen2 with GQA), without patching it.

Forward pre-hooks (``with_kwargs``) on the decoder layers carry a per-row state through one
forward: which positions hold image tokens, which are padding, each position's index in the
unpruned prompt and its position id. At a stage's ``score_layer`` the hook recomputes only the
attention rows of the compressor's query tokens from that layer's ``q_proj``/``k_proj`` with
rotary embedding (and ``repeat_kv`` for GQA) — no ``output_attentions``, no eager attention. At
its ``prune_layer`` it asks the compressor what to keep, drops the rest (re-padding rows on the
left), optionally inserts recycled tokens, and from then on hands every later layer hidden
states, ``position_embeddings``, ``position_ids`` and a 4-D mask that match the pruned sequence.
Kept tokens keep their position ids (``positions="keep"``, FastV) or are renumbered
(``"compact"``, PDrop, SparseVLM).

Prefill and decode: a forward with more than one query position is a prefill (all stages
run); a one-token forward is a decode step: later layers attend to their own, shorter KV cache
plus the generated tokens, with the decode position shifted by the tokens dropped before it
(compact) or unchanged (keep). ``replay`` makes a prefill apply the decisions recorded by an
earlier one (the first L positions pruned as then, later positions kept): this is how a
no-cache recomputation of the pruned sequence is run.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field

import torch

from gc2bench.compressors.base import SEGMENT_RECYCLED, SEGMENT_TEXT, LLMContext
from gc2bench.errors import ModelLoadError

# transformers releases the hooks were tested on (the lock's and the newest 5.x: `bash .ci/latest`).
TESTED_TRANSFORMERS = ">=5.23,<=5.24"
# What the hooks read from each decoder layer's forward: the cache moved from `past_key_values` (<= 5.23)
# to `cache` (5.24).
LAYER_ARGUMENTS = ("hidden_states", "attention_mask", "position_ids", "position_embeddings")
CACHE_ARGUMENTS = ("cache", "past_key_values")


class UnsupportedDecoderError(ModelLoadError, RuntimeError):
    """The installed transformers' decoder layers lack an argument or module the pruning hooks read (a model
    gc2bench cannot hook: reported in one line, exit status 2, when the adapter is built)."""


def cache_argument(language_model) -> str:
    """The name under which ``language_model``'s decoder layers take the KV cache, after checking that their
    forward has every argument the hooks read and the modules they use; else one UnsupportedDecoderError line."""
    import transformers

    def unsupported(what: str) -> UnsupportedDecoderError:
        return UnsupportedDecoderError(
            f"decoder pruning: {what} (transformers {transformers.__version__}; gc2bench's in-LLM hooks are tested "
            f"on transformers {TESTED_TRANSFORMERS}: install the lock with install.sh)"
        )

    layers = getattr(language_model, "layers", None)
    if not layers:
        raise unsupported(f"{type(language_model).__name__} has no decoder `layers`")
    layer = layers[0]
    parameters = inspect.signature(layer.forward).parameters
    missing = [name for name in LAYER_ARGUMENTS if name not in parameters]
    cache = next((name for name in CACHE_ARGUMENTS if name in parameters), None)
    if cache is None:
        missing.append(" or ".join(CACHE_ARGUMENTS))
    if missing:
        raise unsupported(f"{type(layer).__name__}.forward has no argument {', '.join(missing)}")
    attention = getattr(layer, "self_attn", None)
    needed = {"input_layernorm": layer, "self_attn": layer, "rotary_emb": language_model}
    needed.update({name: attention for name in ("q_proj", "k_proj", "head_dim", "scaling", "num_key_value_groups")})
    absent = [name for name, owner in needed.items() if owner is None or not hasattr(owner, name)]
    modeling = sys.modules[type(layer).__module__]
    absent += [name for name in ("apply_rotary_pos_emb", "repeat_kv") if not hasattr(modeling, name)]
    if absent:
        raise unsupported(f"{type(layer).__name__} lacks {', '.join(absent)}")
    return cache


@dataclass
class RowState:
    """Per-row tensors describing the current sequence [B, L] at some layer of one prefill."""

    image: torch.Tensor
    valid: torch.Tensor
    segment: torch.Tensor
    original_index: torch.Tensor
    position_ids: torch.Tensor
    position_embeddings: tuple
    mask: torch.Tensor | None = None  # 4-D mask handed to the layers once the sequence changed
    masked: torch.Tensor | None = None  # [B, L] bool, image tokens hidden by a mask instead of dropped (reselect)

    def take(self, index: torch.Tensor, **replacements) -> RowState:
        """Rows re-gathered along positions by ``index`` [B, L'] (index -1 → padding)."""
        safe = index.clamp(min=0)
        pad = index < 0

        def gather(t, fill):
            return t.gather(1, safe).masked_fill(pad, fill)

        values = {
            "image": gather(self.image, False),
            "valid": gather(self.valid, False),
            "segment": gather(self.segment, SEGMENT_TEXT),
            "original_index": gather(self.original_index, -1),
            "position_ids": gather(self.position_ids, 1),
            "position_embeddings": None,
        }
        values.update(replacements)
        return RowState(**values)


@dataclass
class PruneRecord:
    """What one stage decided, for replay and accounting."""

    keep: torch.Tensor  # [B, L_in] bool
    recycled: list | None  # B tensors [E_b, D] or None


@dataclass
class PrefillPlan:
    """Inputs of one ``generate`` call (set by the adapter before it)."""

    image: torch.Tensor  # [B, L] bool
    valid: torch.Tensor  # [B, L] bool
    segment: torch.Tensor  # [B, L] long
    segment_budgets: torch.Tensor | None = None
    replay: list[PruneRecord] | None = None
    records: list[PruneRecord] = field(default_factory=list)
    image_tokens_per_layer: torch.Tensor | None = None  # [num_layers, B], filled at prefill
    attention_rows: dict = field(default_factory=dict)  # stage → [B, L] rows the compressor saw
    query_rows: dict = field(default_factory=dict)  # stage → [B, L] bool, their query positions
    # Per stage, [B, L_s] long: the segment id of every position of the sequence after it (view 0 thumbnail,
    # 1 + j crop j, SEGMENT_NEWLINE, SEGMENT_RECYCLED; SEGMENT_TEXT at text and padding). Filled at prefill.
    kept_segments: list = field(default_factory=list)
    # Per stage, [B, L_s] long: the prompt position of every position of that sequence (-1 at recycled
    # tokens, padding and, with decode=reselect, the masked image tokens). Filled at prefill.
    kept_positions: list = field(default_factory=list)


class DecoderPruner:
    """Runs an LLM-stage compressor inside ``language_model`` (a transformers Llama/Qwen2 model)."""

    def __init__(self, language_model, compressor, seed: int = 0):
        self.model = language_model
        self.layers = language_model.layers
        self.compressor = compressor
        self.seed = seed
        self.cache_argument = cache_argument(language_model)
        self.stages = compressor.stages(len(self.layers))
        self.first_prune = min(stage.prune_layer for stage in self.stages)
        self.reselect = compressor.decode == "reselect"
        if self.reselect and (len(self.stages) != 1 or compressor.positions != "keep"):
            raise ValueError(f"{compressor.name}: decode=reselect needs one stage with positions='keep' (FastV)")
        self._decode_visible: torch.Tensor | None = None  # reselect: [B, T] keys visible to layers >= K
        self.plan: PrefillPlan | None = None
        self.state: RowState | None = None  # current sequence during a prefill
        self.stage_states: dict[int, RowState] = {}  # layer index → state after its pruning (for decode)
        self._pending: dict[int, tuple] = {}
        self._embeds: torch.Tensor | None = None  # the last prefill's input embeddings (LLMContext.input_embeds)
        self._handles = [
            layer.register_forward_pre_hook(self._hook(index), with_kwargs=True)
            for index, layer in enumerate(self.layers)
        ]
        self._handles.append(language_model.register_forward_pre_hook(self._new_forward, with_kwargs=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def begin(self, plan: PrefillPlan) -> None:
        self.plan = plan

    # -- hooks ------------------------------------------------------------------------------------

    def _new_forward(self, module, args, kwargs):
        self.state = None
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            self._embeds = embeds

    def _hook(self, index: int):
        def before_layer(module, args, kwargs):
            if self.plan is None:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] > 1:
                return self._prefill(index, module, hidden, args, kwargs)
            return self._decode(index, hidden, args, kwargs)

        return before_layer

    def _start(self, hidden: torch.Tensor, kwargs) -> RowState:
        plan = self.plan
        batch, length = hidden.shape[:2]
        extra = length - plan.image.shape[1]  # > 0 when replaying on a longer (no-cache) sequence
        if extra < 0 or (extra > 0 and plan.replay is None):
            raise RuntimeError(f"decoder pruning: got {length} positions, the prompt has {plan.image.shape[1]}")

        def extend(t, fill):
            return torch.cat([t, t.new_full((batch, extra), fill)], dim=1) if extra else t

        positions = kwargs.get("position_ids")
        if positions is None or positions.shape[0] != batch:
            valid = extend(plan.valid, True).long()
            positions = (valid.cumsum(1) - 1).masked_fill(valid == 0, 1)
        return RowState(
            image=extend(plan.image, False),
            valid=extend(plan.valid, True),
            segment=extend(plan.segment, SEGMENT_TEXT),
            original_index=torch.arange(length, device=hidden.device).expand(batch, length).clone(),
            position_ids=positions.expand(batch, length).clone(),
            position_embeddings=kwargs["position_embeddings"],
        )

    def _prefill(self, index, layer, hidden, args, kwargs):
        if self.state is None:
            self.state = self._start(hidden, kwargs)
            self.stage_states = {}
            self._pending = {}
            self.plan.records = []
            self.plan.kept_segments = []
            self.plan.kept_positions = []
            self.plan.image_tokens_per_layer = torch.zeros(
                len(self.layers), hidden.shape[0], dtype=torch.long, device=hidden.device
            )
        replacing = False
        for number, stage in enumerate(self.stages):
            if stage.score_layer == index and self.plan.replay is None:
                self._pending[number] = self._attention_rows(layer, hidden, number)
                self.plan.attention_rows[number] = self._pending[number][0]
            if stage.prune_layer == index:
                hidden = self._prune(number, hidden)
                replacing = True
        visible = self.state.image if self.state.masked is None else self.state.image & ~self.state.masked
        self.plan.image_tokens_per_layer[index] = visible.sum(1)
        if index >= self.first_prune:
            self.stage_states[index] = self.state
            replacing = True
        if not replacing:
            return None
        return self._replace(
            hidden, args, kwargs, self.state.mask, self.state.position_embeddings, self.state.position_ids
        )

    def _decode(self, index, hidden, args, kwargs):
        if self.reselect:
            return self._decode_reselect(index, hidden, args, kwargs)
        if index < self.first_prune or index not in self.stage_states:
            return None
        stage_state = self.stage_states[index]
        cached = self._cache(index, kwargs).get_seq_length(index)
        generated = cached - stage_state.valid.shape[1] + 1
        keys = torch.cat([stage_state.valid, stage_state.valid.new_ones(hidden.shape[0], generated)], dim=1)
        mask = self._mask_format(keys[:, None, None, :])
        positions = kwargs["position_ids"]
        embeddings = kwargs["position_embeddings"]
        if self.compressor.positions == "compact":
            shift = (self.plan.valid.sum(1) - stage_state.valid.sum(1))[:, None]
            positions = positions - shift
            embeddings = self.model.rotary_emb(hidden, positions)
        return self._replace(hidden, args, kwargs, mask, embeddings, positions)

    def _decode_reselect(self, index, hidden, args, kwargs):
        """FastV's own decode (their mask path): the new token's layer K−1 attention over the whole cache
        re-ranks the prompt's image tokens; layers >= K see only the top k of them (same k as at prefill)."""
        stage = self.stages[0]
        cache = self._cache(index, kwargs)
        if index == stage.score_layer:
            row = self._decode_attention_row(self.layers[index], hidden, cache.layers[index].keys, kwargs)
            batch, total = row.shape
            generated = total - self.plan.image.shape[1]
            image = torch.cat([self.plan.image, self.plan.image.new_zeros(batch, generated)], dim=1)
            valid = torch.cat([self.plan.valid, self.plan.valid.new_ones(batch, generated)], dim=1)
            present = self.plan.image.sum(1)
            counts = self.compressor.kept_counts(present, present)
            ranked = row.masked_fill(~image, -torch.inf) + 0.0
            order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(total, device=row.device).expand_as(order))
            self._decode_visible = valid & (~image | (rank < counts[:, None]))
            return None
        if index < stage.prune_layer:
            return None
        mask = self._mask_format(self._decode_visible[:, None, None, :])
        return self._replace(hidden, args, kwargs, mask, kwargs["position_embeddings"], kwargs["position_ids"])

    def _decode_attention_row(self, layer, hidden: torch.Tensor, cached_keys: torch.Tensor, kwargs) -> torch.Tensor:
        """[B, T + 1] head-mean post-softmax attention of the one new token (``hidden`` [B, 1, D] entering
        ``layer``) over the cached keys [B, H_kv, T, d] (rotated) and its own; padding keys excluded."""
        attention = layer.self_attn
        modeling = sys.modules[type(attention).__module__]
        x = layer.input_layernorm(hidden)
        batch, head_dim = x.shape[0], attention.head_dim
        q = attention.q_proj(x).view(batch, 1, -1, head_dim).transpose(1, 2)
        k = attention.k_proj(x).view(batch, 1, -1, head_dim).transpose(1, 2)
        cos, sin = kwargs["position_embeddings"]
        q, k = modeling.apply_rotary_pos_emb(q, k, cos, sin)
        keys = modeling.repeat_kv(torch.cat([cached_keys, k], dim=2), attention.num_key_value_groups)
        logits = (q.float() @ keys.float().transpose(-1, -2)) * attention.scaling  # [B, H, 1, T + 1]
        generated = keys.shape[2] - self.plan.valid.shape[1]
        valid = torch.cat([self.plan.valid, self.plan.valid.new_ones(batch, generated)], dim=1)
        return logits.masked_fill(~valid[:, None, None, :], -torch.inf).softmax(-1).mean(1)[:, 0]

    # -- pieces -----------------------------------------------------------------------------------

    def _cache(self, index: int, kwargs):
        """The KV cache a decoder layer got (``past_key_values`` or, from transformers 5.24, ``cache``)."""
        cache = kwargs.get(self.cache_argument)
        if cache is None:
            raise UnsupportedDecoderError(
                f"decoder pruning: layer {index} got no `{self.cache_argument}` while "
                "decoding (generate with use_cache=True, or replay without a cache)"
            )
        return cache

    @staticmethod
    def _replace(hidden, args, kwargs, mask, embeddings, positions):
        kwargs = dict(kwargs)
        if args:
            args = (hidden, *args[1:])
        else:
            kwargs["hidden_states"] = hidden
        kwargs.update(attention_mask=mask, position_embeddings=embeddings, position_ids=positions)
        return args, kwargs

    def _context(self, number: int, hidden: torch.Tensor, attention=(None, None)) -> LLMContext:
        generator = torch.Generator(device="cpu").manual_seed(self.seed + number)
        return LLMContext(
            stage_index=number,
            stage=self.stages[number],
            hidden=hidden,
            input_embeds=self._embeds,
            original_index=self.state.original_index,
            image=self.state.image,
            valid=self.state.valid,
            segment=self.state.segment,
            image_tokens_at_start=self.plan.image.sum(1),
            segment_budgets=self.plan.segment_budgets,
            attention=attention[0],
            query_attention=attention[1],
            generator=generator,
        )

    def _allowed(self, state: RowState) -> torch.Tensor:
        """[B, L, L] bool: causal over positions, keys restricted to valid ones (padding rows see themselves)."""
        length = state.valid.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=state.valid.device).tril()
        allowed = causal[None] & state.valid[:, None, :]
        return allowed | torch.eye(length, dtype=torch.bool, device=state.valid.device)[None] & ~state.valid[:, :, None]

    def _mask_format(self, allowed: torch.Tensor) -> torch.Tensor:
        """A bool mask [B, 1, Q, K] in the form the model's attention implementation takes."""
        if self.layers[0].self_attn.config._attn_implementation == "eager":
            dtype = self.layers[0].self_attn.q_proj.weight.dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(dtype).min
            )
        return allowed

    def _attention_rows(self, layer, hidden: torch.Tensor, number: int) -> tuple:
        """([B, L] head-mean post-softmax attention of the stage's query rows averaged over them, and, for a
        compressor with ``wants_query_attention``, the rows themselves [B, Q, L] (0 past each row's count))."""
        state = self.state
        queries = self.compressor.query_rows(self._context(number, hidden)) & state.valid
        self.plan.query_rows[number] = queries
        count = queries.sum(1)
        width = int(count.max())
        order = torch.sort(queries.long(), dim=1, descending=True, stable=True).indices[:, :width]  # query positions
        present = torch.arange(width, device=hidden.device)[None, :] < count[:, None]
        attention = layer.self_attn
        modeling = sys.modules[type(attention).__module__]
        x = layer.input_layernorm(hidden)
        batch, length, _ = x.shape
        head_dim = attention.head_dim
        q = attention.q_proj(x.gather(1, order[..., None].expand(-1, -1, x.shape[-1])))
        q = q.view(batch, width, -1, head_dim).transpose(1, 2)
        k = attention.k_proj(x).view(batch, length, -1, head_dim).transpose(1, 2)
        cos, sin = state.position_embeddings
        index = order[..., None].expand(-1, -1, cos.shape[-1])
        q, _ = modeling.apply_rotary_pos_emb(
            q, q, cos.expand(batch, -1, -1).gather(1, index), sin.expand(batch, -1, -1).gather(1, index)
        )
        _, k = modeling.apply_rotary_pos_emb(k, k, cos, sin)
        k = modeling.repeat_kv(k, attention.num_key_value_groups)
        logits = (q.float() @ k.float().transpose(-1, -2)) * attention.scaling  # [B, H, Q, L]
        allowed = self._allowed(state).gather(1, order[..., None].expand(-1, -1, length))  # [B, Q, L]
        logits = logits.masked_fill(~allowed[:, None], -torch.inf)
        rows = logits.softmax(-1).mean(1)  # [B, Q, L]
        rows = rows.masked_fill(~present[..., None], 0.0)
        per_query = rows if self.compressor.wants_query_attention else None
        return rows.sum(1) / count.clamp(min=1)[:, None], per_query

    def _prune(self, number: int, hidden: torch.Tensor) -> torch.Tensor:
        state = self.state
        if self.plan.replay is not None:
            if self.reselect:
                raise RuntimeError(
                    f"{self.compressor.name}: replay re-applies the prefill's choice at every position; "
                    "decode=reselect re-ranks at every generated token (use decode=static)"
                )
            record = self.plan.replay[number]
            extra = hidden.shape[1] - record.keep.shape[1]
            keep = torch.cat([record.keep, record.keep.new_ones(record.keep.shape[0], extra)], dim=1)
            recycled = record.recycled
        else:
            decision = self.compressor.prune(self._context(number, hidden, self._pending.pop(number)))
            keep, recycled = decision.keep, decision.recycled
            if bool((~keep & ~state.image & state.valid).any()):
                raise RuntimeError(f"{self.compressor.name}: stage {number} dropped a text token")
        keep = keep & state.valid
        if self.plan.replay is None:
            self.plan.records.append(PruneRecord(keep, recycled))
        if self.reselect:
            self._mask_out(state.image & ~keep)
            self.plan.kept_segments.append(torch.where(self.state.masked, SEGMENT_TEXT, self.state.segment))
            self.plan.kept_positions.append(self.state.original_index.masked_fill(self.state.masked, -1))
            return hidden
        hidden = self._rebuild(hidden, keep, recycled)
        self.plan.kept_segments.append(self.state.segment)
        self.plan.kept_positions.append(self.state.original_index)
        return hidden

    def _mask_out(self, masked: torch.Tensor) -> None:
        """Keep the sequence but hide the ``masked`` [B, L] image tokens as keys from every query in the later
        layers (FastV's mask path: their keys and values stay in the cache for re-selection while decoding)."""
        state = self.state
        allowed = self._allowed(state) & ~masked[:, None, :]
        eye = torch.eye(allowed.shape[1], dtype=torch.bool, device=allowed.device)[None]
        allowed = allowed | (eye & ~allowed.any(-1, keepdim=True))
        self.state = RowState(
            image=state.image,
            valid=state.valid,
            segment=state.segment,
            original_index=state.original_index,
            position_ids=state.position_ids,
            position_embeddings=state.position_embeddings,
            mask=self._mask_format(allowed[:, None]),
            masked=masked,
        )

    def _rebuild(self, hidden: torch.Tensor, keep: torch.Tensor, recycled) -> torch.Tensor:
        """New left-padded sequence of the kept positions (+ recycled tokens after each row's last kept image token)."""
        state = self.state
        batch, length, dim = hidden.shape
        extra = [0] * batch if recycled is None else [len(r) for r in recycled]
        lengths = keep.sum(1).tolist()
        width = max(n + e for n, e in zip(lengths, extra))
        index = torch.full((batch, width), -1, dtype=torch.long, device=hidden.device)
        new_hidden = hidden.new_zeros(batch, width, dim)
        recycled_slot = torch.zeros(batch, width, dtype=torch.bool, device=hidden.device)
        for row in range(batch):
            kept = keep[row].nonzero().squeeze(1)
            if extra[row]:
                image_kept = (state.image[row, kept]).nonzero()
                cut = int(image_kept[-1]) + 1 if len(image_kept) else int((~state.valid[row]).sum())
                slots = torch.cat([kept[:cut], kept.new_full((extra[row],), -2), kept[cut:]])
            else:
                slots = kept
            start = width - len(slots)
            index[row, start:] = slots
            recycled_slot[row, start:] = slots == -2
        gathered = hidden.gather(1, index.clamp(min=0)[..., None].expand(-1, -1, dim))
        new_hidden = torch.where((index >= 0)[..., None], gathered, new_hidden)
        for row in range(batch):
            if extra[row]:
                new_hidden[row, recycled_slot[row]] = recycled[row].to(hidden.dtype)
        new_state = state.take(torch.where(recycled_slot, -1, index))
        new_state.valid = new_state.valid | recycled_slot
        new_state.image = new_state.image | recycled_slot
        new_state.segment = torch.where(recycled_slot, SEGMENT_RECYCLED, new_state.segment)
        if self.compressor.positions == "compact":
            valid = new_state.valid.long()
            new_state.position_ids = (valid.cumsum(1) - 1).masked_fill(valid == 0, 1)
            new_state.position_embeddings = self.model.rotary_emb(new_hidden, new_state.position_ids)
        else:
            if bool(recycled_slot.any()):
                raise RuntimeError(f"{self.compressor.name}: recycled tokens need positions='compact'")
            cos, sin = state.position_embeddings
            gather_index = index.clamp(min=0)[..., None].expand(-1, -1, cos.shape[-1])
            new_state.position_embeddings = (
                cos.expand(batch, -1, -1).gather(1, gather_index),
                sin.expand(batch, -1, -1).gather(1, gather_index),
            )
        new_state.mask = self._mask_format(self._allowed(new_state)[:, None])
        self.state = new_state
        return new_hidden
