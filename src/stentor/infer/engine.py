"""A lean CPU decode engine for Llama-shaped Hugging Face models.

A 12M-parameter model is limited by per-op overhead, not arithmetic, so the forward pass is
written to issue as few torch calls as possible per layer:

* Q, K, V come out of one matmul and RoPE is `qkv*cos + swap_halves(qkv)*sin_signed` on all of
  them at once with precomputed tables (the sign of rotate_half lives in the sin table; cos=1,
  sin=0 on the V columns, so V passes through exactly).
* Weights are stored [in, out] for `mm`/`addmm`, which is faster than `linear` on CPU here.
* gate and up projections are one matmul; o_proj and down_proj add the residual in `addmm`.
* K and V of a layer share one preallocated cache tensor [batch, 2*kv_heads, capacity, head_dim],
  written with one copy per step; attention is one `scaled_dot_product_attention` call (GQA native).
* Rows of a batch are left-padded; each row has its own RoPE positions, and pad keys are masked.
* A model from `stentor quantize` keeps its int8/int4 modules, fused the same way (their `cat`), and
  they replace the fp32 matmuls: fewer bytes of weights per token is what speeds up CPU decoding.

Logits match `LlamaForCausalLM` in fp32 to ~1e-6; sampling goes through `LogitsPipeline`, which
reproduces HF's processors, so greedy and seeded sampled tokens match HF `generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stentor.errors import StentorError
from stentor.infer.decoding import LogitAdjust, SamplingParams, Step, chosen_logprobs, fit_prompt, plan_rows
from stentor.infer.sampling import LogitsPipeline
from stentor.infer.text import Utf8Guard

# Rows up to this many tokens take the compiled stages (attention over a few dozen keys in one pass);
# longer ones (perplexity windows) take torch's flash attention, whose cost grows better with length.
TREE_STAGES_MAX_WIDTH = 256

Weight = torch.Tensor | torch.nn.Module  # an fp32 [in, out] matrix, or a quantized Linear (stentor.model.quantized)


@dataclass
class _Layer:
    norm1: torch.Tensor
    w_qkv: Weight  # [hidden, (heads + 2 * kv_heads) * head_dim]
    b_qkv: torch.Tensor | None
    w_o: Weight
    b_o: torch.Tensor | None
    norm2: torch.Tensor
    w_gate_up: Weight
    b_gate_up: torch.Tensor | None
    w_down: Weight
    b_down: torch.Tensor | None


def _mm(x: torch.Tensor, w: Weight, b: torch.Tensor | None) -> torch.Tensor:
    if isinstance(w, torch.nn.Module):
        return w(x) if b is None else w(x) + b
    return torch.mm(x, w) if b is None else torch.addmm(b, x, w)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF LlamaRMSNorm's arithmetic in four ops (F.rms_norm's CPU path costs ~25 us a call at this size);
    a bf16 input is normalized in fp32 (with the fp32 weight) and the result cast back."""
    if x.dtype == torch.float32:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    y = x.float()
    return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps) * weight).to(x.dtype)


def _mm_add(residual: torch.Tensor, x: torch.Tensor, w: Weight) -> torch.Tensor:
    return residual + w(x) if isinstance(w, torch.nn.Module) else torch.addmm(residual, x, w)


class Engine:
    """Prefill + decode for a `LlamaForCausalLM` (MHA or GQA), batch-first, in fp32.

    The engine copies the weights it needs (fused), so the HF model can be freed or kept for
    comparison; it is not thread-safe (the server gives it one scheduler thread). With
    `dtype=torch.bfloat16` the weights, activations and cache are bf16 (what batched scoring
    runs on CPUs with AMX or AVX512-BF16); RMSNorm still computes in fp32, as HF's LlamaRMSNorm does.
    """

    @staticmethod
    def unsupported(model: torch.nn.Module) -> str | None:
        """Why the engine cannot run `model`, or None when it can."""
        config = getattr(model, "config", None)
        if getattr(config, "model_type", None) not in {"llama", "mistral"} or not hasattr(model, "model"):
            return (f"the stentor engine runs Llama-shaped models; this one is {type(model).__name__} "
                    f"({getattr(config, 'model_type', '?')}); use --engine hf for it")  # fmt: skip
        if getattr(config, "sliding_window", None):
            return "sliding-window attention is not supported by the stentor engine; use --engine hf"
        return None

    def __init__(self, model: torch.nn.Module, *, compile: bool = False, dtype: torch.dtype = torch.float32):
        reason = self.unsupported(model)
        if reason:
            raise StentorError(reason)
        config = model.config
        from transformers.activations import ACT2FN

        self.config = config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.max_positions = config.max_position_embeddings
        self.act = ACT2FN[config.hidden_act]
        self.dtype = dtype
        inner = model.model
        with torch.no_grad():
            cast = lambda t: t.detach().to(dtype).contiguous()  # noqa: E731
            fp32 = lambda t: t.detach().float().contiguous()  # noqa: E731
            self.embed = cast(inner.embed_tokens.weight)
            self.norm = fp32(inner.norm.weight)
            head = model.lm_head
            self.lm_head = cast(head.weight.t()) if isinstance(head, torch.nn.Linear) else head
            self.layers = [self._fuse(layer, cast, fp32) for layer in inner.layers]
            self._rope_tables(inner.rotary_emb)
        self.vocab_size = config.vocab_size
        self._stages = None  # the compiled scoring stages, loaded by the first tree_hidden_states (decode never needs them)
        self._stages_checked = False
        # (table address, table, tensors) of the one-call layer stack once packed; None where it cannot run
        self._packed: tuple | None | bool = False
        self._cache: list[torch.Tensor] = []
        self._step = torch.compile(self._forward, dynamic=True) if compile else self._forward

    def _fuse(self, layer, cast, fp32) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp

        def cat_t(*linears) -> tuple[Weight, torch.Tensor | None]:
            if not isinstance(linears[0], torch.nn.Linear):  # quantized (stentor.model.quantized): fuse its own way
                return type(linears[0]).cat(list(linears)), None
            weight = cast(torch.cat([lin.weight for lin in linears]).t())
            has_bias = linears[0].bias is not None
            return weight, cast(torch.cat([lin.bias for lin in linears])) if has_bias else None

        w_qkv, b_qkv = cat_t(attn.q_proj, attn.k_proj, attn.v_proj)
        w_o, b_o = cat_t(attn.o_proj)
        w_gate_up, b_gate_up = cat_t(mlp.gate_proj, mlp.up_proj)
        w_down, b_down = cat_t(mlp.down_proj)
        return _Layer(
            norm1=fp32(layer.input_layernorm.weight),
            w_qkv=w_qkv,
            b_qkv=b_qkv,
            w_o=w_o,
            b_o=b_o,
            norm2=fp32(layer.post_attention_layernorm.weight),
            w_gate_up=w_gate_up,
            b_gate_up=b_gate_up,
            w_down=w_down,
            b_down=b_down,
        )

    def _native_stages(self):
        """The compiled runtime's scoring stages, when it is installed and these weights are plain matrices."""
        if self._stages_checked:
            return self._stages
        self._stages_checked = True
        layers_plain = all(
            isinstance(w, torch.Tensor) and b is None
            for layer in self.layers
            for w, b in ((layer.w_qkv, layer.b_qkv), (layer.w_o, layer.b_o), (layer.w_gate_up, layer.b_gate_up),
                         (layer.w_down, layer.b_down))
        )  # fmt: skip
        if not layers_plain or self.config.hidden_act != "silu" or self.head_dim % 2:
            return None
        from stentor.infer.native import Stages, Unsupported

        try:
            self._stages = Stages(torch.get_num_threads())
        except Unsupported:
            pass
        return self._stages

    def _packed_layers(self):
        """The layer weights packed for the compiled one-call layer stack (`_tree_body_packed`): float32
        panels on AVX-512 for fp32 engines, bf16 tiles on AMX (or AVX512-BF16) for bf16 ones. The address
        of a table of 6 pointers per layer, the table and the tensors it points into; None where it cannot run."""
        if self._packed is not False:
            return self._packed
        self._packed = None
        stages = self._native_stages()
        qkv_width = (self.heads + 2 * self.kv_heads) * self.head_dim
        widths = (self.embed.shape[1], self.config.intermediate_size, self.heads * self.head_dim, qkv_width)
        if stages is None or any(w % 32 for w in widths):
            return None
        if not (stages.f32_tiles if self.dtype == torch.float32 else self.dtype == torch.bfloat16 and stages.bf16_unit):
            return None
        import ctypes

        keep, pointers = [], []
        for layer in self.layers:
            for w in (layer.norm1, layer.w_qkv, layer.w_o, layer.norm2, layer.w_gate_up, layer.w_down):
                if w.dim() == 2:  # the matrices; the norms' weight vectors pass as they are
                    w = self._pack(w)
                keep.append(w)
                pointers.append(w.data_ptr())
        table = (ctypes.c_void_p * len(pointers))(*pointers)
        self._packed = (ctypes.addressof(table), table, keep)
        return self._packed

    def bf16_head(self, weight: torch.Tensor, products: int = 3) -> torch.Tensor | None:
        """An LM head [hidden, vocab] (float32) packed for the compiled bf16 logprobs. products 3: [W_hi; W_hi;
        W_lo] as bf16 tiles, so hi.hi + lo.hi + hi.lo gives the logits to ~2^-16 on bf16 units; 1: W_hi
        alone, plain bf16 products. None where that cannot run (no bf16 stack for this engine, or a
        vocabulary that is not a multiple of 32)."""
        if self.dtype != torch.bfloat16 or self._packed_layers() is None or weight.shape[1] % 32:
            return None
        hi = weight.to(torch.bfloat16)
        parts = [hi, hi, (weight - hi.float()).to(torch.bfloat16)] if products == 3 else [hi]
        return self._pack(torch.cat(parts).contiguous())

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        """A contiguous [in, out] matrix in the compiled matmuls' order: bf16 in AMX tile order (int16 storage,
        what the C calls read), float32 in panels of 32 columns."""
        if weight.dtype == torch.float32:
            packed = torch.empty(weight.numel(), dtype=torch.float32)
            self._stages.f32_pack(weight.data_ptr(), weight.shape[0], weight.shape[1], packed.data_ptr())
            return packed
        packed = torch.empty(weight.numel(), dtype=torch.int16)
        self._stages.bf16_pack(weight.data_ptr(), weight.shape[0], weight.shape[1], packed.data_ptr())
        return packed

    def _rope_tables(self, rotary) -> None:
        """cos/sin per position for the fused [q k v] columns, as HF's rotary embedding computes them."""
        positions = torch.arange(self.max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, rotary.inv_freq.float())
        emb = torch.cat([freqs, freqs], dim=-1)
        scale = getattr(rotary, "attention_scaling", 1.0)
        cos, sin = emb.cos() * scale, emb.sin() * scale
        half = self.head_dim // 2
        self.cos_half, self.sin_half = cos[:, :half].contiguous(), sin[:, :half].contiguous()  # the C stages' tables
        sin[:, :half] *= -1  # rotate_half(x) = cat(-x2, x1) = swap_halves(x) * [-1.., +1..]
        qk_heads = self.heads + self.kv_heads
        ones = torch.ones(self.max_positions, self.kv_heads * self.head_dim)
        self.cos = torch.cat([cos.repeat(1, qk_heads), ones], dim=1).to(self.dtype)
        self.sin = torch.cat([sin.repeat(1, qk_heads), ones * 0], dim=1).to(self.dtype)

    # -- forward -----------------------------------------------------------------------------

    def _ensure_cache(self, batch: int, length: int) -> None:
        if self._cache and self._cache[0].shape[0] >= batch and self._cache[0].shape[2] >= length:
            return
        if self._cache:
            batch, length = max(batch, self._cache[0].shape[0]), max(length, self._cache[0].shape[2])
        shape = (batch, 2 * self.kv_heads, length, self.head_dim)
        self._cache = [torch.empty(shape, dtype=self.dtype) for _ in self.layers]

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, start: int, mask: torch.Tensor | None, last_only: bool
    ) -> torch.Tensor:
        """Run `ids` [B, T] at cache columns start..start+T; return logits [B, V] (last) or [B, T, V]."""
        batch, steps = ids.shape
        x = self._body(ids, positions, start, mask)
        if last_only:
            x = x.view(batch, steps, -1)[:, -1]
            return _mm(_rms_norm(x, self.norm, self.eps), self.lm_head, None)
        x = _rms_norm(x, self.norm, self.eps)
        return _mm(x, self.lm_head, None).view(batch, steps, -1)

    def hidden_states(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The final normed hidden state of every token [B*T, hidden], what the LM head reads (for scoring).

        `positions` [B, T] are the RoPE positions; `mask` [B, 1, T, T] (True = may attend) or None (causal).
        """
        batch, steps = ids.shape
        self._check_length(int(positions.max()) + 1)
        self._ensure_cache(batch, steps)
        return _rms_norm(self._body(ids, positions, 0, mask), self.norm, self.eps)

    def tree_hidden_states(
        self, ids: torch.Tensor, positions: torch.Tensor, seg: torch.Tensor, trunk: torch.Tensor
    ) -> torch.Tensor:
        """Final normed hidden states [B*W, hidden] of packed trees (what `stentor.eval.scoring` builds).

        Token t of row r sees keys [0, min(trunk[r], seg[r, t])) and [seg[r, t], t]: a trunk token has
        seg 0, a branch token its branch's first column, a pad itself. With the compiled runtime every
        stage between the matmuls runs there (one pass each; the residual stream stays fp32), else in torch.
        """
        if ids.shape[1] > TREE_STAGES_MAX_WIDTH or self._native_stages() is None:
            return self.hidden_states(ids, positions, self._tree_mask(seg, trunk))
        self._check_length(int(positions.max()) + 1)
        if self._packed_layers() is not None:
            return self._tree_body_packed(ids, positions, seg, trunk)
        return self._tree_body(ids, positions, seg, trunk)

    def _tree_body_packed(self, ids: torch.Tensor, positions: torch.Tensor, seg: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
        """tree_hidden_states in one compiled call (float32 out), each thread's tile of rows through every
        layer in its own cache: float32 matmuls on AVX-512, or bf16 ones (AMX or AVX512-BF16) with float32 outputs (then
        only the matmul inputs are bf16; norms, RoPE, attention and SiLU are float32 either way)."""
        table = self._packed[0]
        rows, width = ids.shape
        i32 = [t.to(torch.int32).contiguous() for t in (positions, seg, trunk)]
        x = F.embedding(ids.view(-1), self.embed).float().contiguous()
        sizes = (self.embed.shape[1], self.config.intermediate_size, self.heads, self.kv_heads, self.head_dim, len(self.layers))
        ran = self._stages.tree_forward(rows, width, sizes, self.dtype == torch.float32, self.eps, table, self.norm.data_ptr(),
                                        self.cos_half.data_ptr(), self.sin_half.data_ptr(), i32[0].data_ptr(),
                                        i32[1].data_ptr(), i32[2].data_ptr(), x.data_ptr())  # fmt: skip
        return x if ran else self._tree_body(ids, positions, seg, trunk)

    @staticmethod
    def _tree_mask(seg: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor | None:
        width = seg.shape[1]
        if bool((seg == 0).all()):
            return None  # every row a plain causal sequence
        col = torch.arange(width)
        causal = col[None, None, :] <= col[None, :, None]
        keys = (col[None, None, :] < torch.minimum(trunk[:, None, None], seg[:, :, None])) | (col[None, None, :] >= seg[:, :, None])
        return (causal & keys)[:, None]

    def _tree_body(self, ids: torch.Tensor, positions: torch.Tensor, seg: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
        stages, bf16 = self._stages, self.dtype == torch.bfloat16
        rows, width = ids.shape
        n, hidden, inner = rows * width, self.embed.shape[1], self.config.intermediate_size
        i32 = [t.to(torch.int32).contiguous() for t in (positions, seg, trunk)]
        x = F.embedding(ids.view(-1), self.embed).float()  # the residual stream, fp32
        y = torch.empty(n, hidden, dtype=self.dtype)
        att = torch.empty(n, self.heads * self.head_dim, dtype=self.dtype)
        glu = torch.empty(n, inner, dtype=self.dtype)
        add = None
        for layer in self.layers:
            stages.add_norm(n, hidden, bf16, x.data_ptr(), add, layer.norm1.data_ptr(), self.eps, y.data_ptr())
            qkv = torch.mm(y, layer.w_qkv)
            stages.tree_attention(rows, width, self.heads, self.kv_heads, self.head_dim, bf16, qkv.data_ptr(),
                                  i32[0].data_ptr(), i32[1].data_ptr(), i32[2].data_ptr(), self.cos_half.data_ptr(),
                                  self.sin_half.data_ptr(), att.data_ptr())  # fmt: skip
            o = torch.mm(att, layer.w_o)
            stages.add_norm(n, hidden, bf16, x.data_ptr(), o.data_ptr(), layer.norm2.data_ptr(), self.eps, y.data_ptr())
            gate_up = torch.mm(y, layer.w_gate_up)
            stages.glu(n, inner, bf16, gate_up.data_ptr(), glu.data_ptr())
            down = torch.mm(glu, layer.w_down)
            add = down.data_ptr()
        stages.add_norm(n, hidden, bf16, x.data_ptr(), add, self.norm.data_ptr(), self.eps, y.data_ptr())
        return y

    def _body(self, ids: torch.Tensor, positions: torch.Tensor, start: int, mask: torch.Tensor | None) -> torch.Tensor:
        """The decoder layers on `ids` [B, T]: the residual stream [B*T, hidden] before the final norm."""
        batch, steps = ids.shape
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        qkv_width = (h + 2 * kv) * d
        end = start + steps
        causal = mask is None and steps > 1
        cos = self.cos[positions].view(batch * steps, qkv_width)
        sin = self.sin[positions].view(batch * steps, qkv_width)
        x = F.embedding(ids, self.embed).view(batch * steps, -1)
        for layer, cache in zip(self.layers, self._cache):
            y = _rms_norm(x, layer.norm1, self.eps)
            qkv = _mm(y, layer.w_qkv, layer.b_qkv)
            swapped = qkv.view(-1, h + 2 * kv, 2, d // 2).roll(1, dims=2).view(-1, qkv_width)
            qkv = torch.addcmul(qkv * cos, swapped, sin).view(batch, steps, h + 2 * kv, d).transpose(1, 2)
            cache_b = cache[:batch]
            cache_b[:, :, start:end] = qkv[:, h:]
            keys = cache_b[:, :kv, :end]
            values = cache_b[:, kv:, :end]
            attn = F.scaled_dot_product_attention(qkv[:, :h], keys, values, mask, is_causal=causal, enable_gqa=kv != h)
            attn = attn.transpose(1, 2).reshape(batch * steps, h * d)
            x = _mm_add(x if layer.b_o is None else x + layer.b_o, attn, layer.w_o)
            y = _rms_norm(x, layer.norm2, self.eps)
            gate_up = _mm(y, layer.w_gate_up, layer.b_gate_up)
            half = gate_up.shape[-1] // 2
            hidden = self.act(gate_up[:, :half]) * gate_up[:, half:]
            x = _mm_add(x if layer.b_down is None else x + layer.b_down, hidden, layer.w_down)
        return x

    @staticmethod
    def _prefill_mask(valid: torch.Tensor) -> torch.Tensor:
        """Causal mask that also hides pad keys; a pad query sees itself so no row is all -inf."""
        steps = valid.shape[1]
        causal = torch.ones(steps, steps, dtype=torch.bool).tril()
        eye = torch.eye(steps, dtype=torch.bool)
        return (causal & (valid[:, None, :] | eye))[:, None]

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Full-sequence logits [B, T, V] for left-padded `input_ids` (what HF's forward returns)."""
        batch, steps = input_ids.shape
        self._check_length(steps)
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        positions = (valid.cumsum(-1) - 1).clamp(min=0)
        self._ensure_cache(batch, steps)
        mask = None if bool(valid.all()) else self._prefill_mask(valid)
        return self._forward(input_ids, positions, 0, mask, last_only=False)

    def _check_length(self, length: int) -> None:
        if length > self.max_positions:
            raise StentorError(
                f"sequence of {length} tokens exceeds the model's context of {self.max_positions}; shorten the input"
            )

    # -- generation --------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        eos_ids: set[int] | frozenset[int] = frozenset(),
        pad_id: int = 0,
        guard: Utf8Guard | None = None,
        cancelled: Callable[[int], bool] | None = None,
    ) -> Iterator[Step]:
        """Decode every prompt (one row each) and yield a `Step` per new token position.

        `params` is one setting for all rows or one per row. A row finishes at an EOS id (when
        its params stop at EOS), after its `max_new_tokens`, or at the end of the context.
        Prompts must already fit the context (see `fit_prompt`). With a `guard`, rows whose params
        set `suppress_replacement_tokens` never emit a token that would render as U+FFFD.
        `cancelled(i)` turning true ends row i at its current token (a server's client went away).
        """
        rows, budget = plan_rows(prompts, params, self.max_positions)
        batch = len(prompts)
        width = max(len(p) for p in prompts)
        capacity = width + max(budget)
        ids = torch.full((batch, width), pad_id, dtype=torch.long)
        valid = torch.zeros(batch, capacity, dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            valid[i, width - len(prompt) :] = True
        valid[:, width:] = True
        padded = not bool(valid[:, :width].all())
        lengths = torch.tensor([len(p) for p in prompts])

        pipeline = LogitsPipeline(rows, self.vocab_size)
        guarded = torch.tensor([p.suppress_replacement_tokens for p in rows])[:, None]
        if guard is not None and guarded.any():
            states = guard.start(prompts)
        else:
            guard = None
        seen = torch.zeros(batch, self.vocab_size, dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            seen[i, prompt] = True
        generator = self._generators(rows)

        self._ensure_cache(batch, capacity)
        positions = (valid[:, :width].cumsum(-1) - 1).clamp(min=0)
        mask = self._prefill_mask(valid[:, :width]) if padded else None
        logits = self._forward(ids, positions, 0, mask, last_only=True)
        count = [0] * batch
        finished = [False] * batch
        wants_logprobs = any(p.logprobs is not None for p in rows)
        adjust = LogitAdjust.of(rows, self.vocab_size)
        column = width
        while True:
            banned = None
            if guard is not None:
                last = [c + 1 >= b for c, b in zip(count, budget)]
                banned = torch.from_numpy(guard.mask(states, last)) & guarded
            raw = logits.float().numpy().copy() if wants_logprobs else None
            if adjust is not None:
                logits = logits.float() + torch.from_numpy(adjust.offsets(slice(None)))
            tokens = pipeline.choose(logits, seen, generator, banned)
            if adjust is not None:
                adjust.observe(list(range(batch)), tokens.numpy())
            if guard is not None:
                states = guard.advance(states, tokens.numpy())
            token_list = tokens.tolist()
            logprobs = chosen_logprobs(raw, token_list, rows) if raw is not None else None
            for i, token in enumerate(token_list):
                if finished[i]:
                    continue
                count[i] += 1
                if (rows[i].stop_at_eos and token in eos_ids) or count[i] >= budget[i] or (cancelled and cancelled(i)):
                    finished[i] = True
            yield Step(token_list, list(finished), logprobs)
            if all(finished):
                return
            seen.scatter_(1, tokens[:, None], True)
            positions = (lengths + (column - width)).unsqueeze(1)
            mask = valid[:, None, None, : column + 1] if padded else None
            logits = self._step(tokens[:, None], positions, column, mask, True)
            column += 1

    @staticmethod
    def _generators(rows: list[SamplingParams]) -> torch.Generator | list[torch.Generator] | None:
        seeds = [p.seed for p in rows]
        if all(s is None for s in seeds):
            return None  # torch's global RNG, like HF generate
        if len(set(seeds)) == 1:
            return torch.Generator().manual_seed(seeds[0])
        return [torch.Generator().manual_seed(s) if s is not None else torch.Generator() for s in seeds]

    def fit_prompt(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Keep the last tokens of a prompt that does not fit the context (see `decoding.fit_prompt`)."""
        return fit_prompt(prompt, max_new_tokens, self.max_positions)
