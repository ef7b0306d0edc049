"""The one module that owns tensors: the paged KV cache, the attention context, the forward pass.

KV layout: per layer, K and V are flat tables of `num_blocks * block_size` slots,
(S, Hkv, D) each, preallocated once within a named memory budget. A sequence's position p
lives in slot `block_table[p // bs] * bs + p % bs`.

A step packs every scheduled token (decodes first, then prefill chunks) into one flat
forward pass, so the weights are read once for the whole batch. Attention then splits:
all decodes together in one SDPA call over K/V gathered into a padded (B, Hkv, L, D)
batch with a length mask; each prefill chunk on its own, causally over its cached prefix
plus itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from npc.engine.model import Transformer
from npc.engine.sampling import Sampler
from npc.engine.scheduler import Work


def kv_bytes_per_token(model: Transformer, dtype: torch.dtype) -> int:
    """Bytes of K plus V for one token across all layers."""
    cfg = model.cfg
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize


def blocks_in_budget(model: Transformer, *, budget_mb: float, block_size: int, dtype: torch.dtype) -> int:
    """How many KV blocks fit in `budget_mb` mebibytes."""
    per_block = kv_bytes_per_token(model, dtype) * block_size
    return int(budget_mb * 2**20 // per_block)


@dataclass(slots=True)
class _Prefill:
    rows: slice  # this chunk's rows in the packed batch
    start: int  # position of its first token
    gather: torch.Tensor | None  # (start + n,) slots of positions 0.., None when start == 0


class StepContext:
    """The AttentionContext for one packed forward pass: writes new K/V, attends over the cache."""

    def __init__(self, runner: "Runner", slots: torch.Tensor, num_decodes: int,
                 decode_gather: torch.Tensor | None, decode_mask: torch.Tensor | None,
                 prefills: list[_Prefill]) -> None:
        self.runner = runner
        self.slots = slots  # (T,) cache slot of each packed token
        self.num_decodes = num_decodes
        self.decode_gather = decode_gather  # (B * L,) slots, padded
        self.decode_mask = decode_mask  # (B, 1, 1, L) True where a position may be attended
        self.prefills = prefills

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D); stores k/v in the cache first."""
        kc, vc = self.runner.k_cache[layer], self.runner.v_cache[layer]  # (S, Hkv, D)
        kc.index_copy_(0, self.slots, k)
        vc.index_copy_(0, self.slots, v)
        hq, d = q.shape[1], q.shape[2]
        hkv = k.shape[1]
        group = hq // hkv
        out = torch.empty_like(q)
        b = self.num_decodes
        if b:
            # Each KV head's G query heads become G "query positions" of one head, so the
            # cached K/V is used as-is with no repeat for grouped-query attention.
            qd = q[:b].view(b, hkv, group, d)  # (B, Hkv, G, D)
            length = self.decode_mask.shape[-1]
            kd = kc.index_select(0, self.decode_gather).view(b, length, hkv, d).transpose(1, 2)
            vd = vc.index_select(0, self.decode_gather).view(b, length, hkv, d).transpose(1, 2)
            od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=self.decode_mask)  # (B, Hkv, G, D)
            out[:b] = od.reshape(b, hq, d)
        for p in self.prefills:
            qp = q[p.rows].transpose(0, 1).unsqueeze(0)  # (1, Hq, n, D)
            if p.gather is None:
                kp = k[p.rows].transpose(0, 1).unsqueeze(0)  # (1, Hkv, n, D)
                vp = v[p.rows].transpose(0, 1).unsqueeze(0)
                op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)
            else:
                n = qp.shape[2]
                kp = kc.index_select(0, p.gather).transpose(0, 1).unsqueeze(0)  # (1, Hkv, L, D)
                vp = vc.index_select(0, p.gather).transpose(0, 1).unsqueeze(0)
                total = p.gather.shape[0]
                # Query i sits at position start + i and sees positions <= start + i.
                qpos = torch.arange(p.start, p.start + n, device=q.device).unsqueeze(1)
                mask = torch.arange(total, device=q.device).unsqueeze(0) <= qpos  # (n, L)
                op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, enable_gqa=True)
            out[p.rows] = op.squeeze(0).transpose(0, 1)
        return out


class Runner:
    """Runs scheduled work through the model and samples next tokens."""

    def __init__(self, model: Transformer, *, num_blocks: int, block_size: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        cfg = model.cfg
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (cfg.num_layers, num_blocks * block_size, cfg.num_kv_heads, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=self.device)  # (L, S, Hkv, D)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=self.device)
        self.sampler = Sampler(self.device)

    @property
    def cache_bytes(self) -> int:
        """Memory held by the KV cache."""
        return 2 * self.k_cache.numel() * self.k_cache.element_size()

    def _slots(self, table: list[int], start: int, stop: int) -> list[int]:
        bs = self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, stop)]

    def _block_tensor(self, tables: list[list[int]]) -> torch.Tensor:
        width = max(len(t) for t in tables)
        return torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long)

    @torch.inference_mode()
    def run(self, work: list[Work]) -> dict[int, int]:
        """One forward pass over `work` (decodes first, as the scheduler orders them).

        Returns {seq_id: sampled token} for the pieces that reach their sequence's end.
        """
        if not work:
            return {}
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        # A piece of one token at the sequence's end attends like a decode, whatever its history.
        decodes = [w for w in work if w.count == 1 and w.samples]
        others = [w for w in work if not (w.count == 1 and w.samples)]
        prefills: list[_Prefill] = []
        sample_rows: list[int] = []
        sample_seqs = []
        for i, w in enumerate(decodes + others):
            seq, a, b = w.seq, w.start, w.start + w.count
            row0 = len(ids)
            ids += seq.tokens[a:b]
            positions += range(a, b)
            slots += self._slots(seq.block_table, a, b)
            if w.samples:
                sample_rows.append(len(ids) - 1)
                sample_seqs.append(seq)
            if i >= len(decodes):
                gather = None
                if a > 0:
                    gather = torch.tensor(self._slots(seq.block_table, 0, b), dtype=torch.long)
                    gather = gather.to(self.device, non_blocking=True)
                prefills.append(_Prefill(slice(row0, len(ids)), a, gather))
        dev = self.device
        decode_gather = decode_mask = None
        if decodes:
            lengths = torch.tensor([len(w.seq.tokens) for w in decodes], dtype=torch.long)
            length = int(lengths.max())
            pos = torch.arange(length)
            table = self._block_tensor([w.seq.block_table for w in decodes])  # (B, blocks)
            gather = table[:, pos // self.block_size] * self.block_size + pos % self.block_size  # (B, L)
            # Padding positions point at slot 0 and are masked out.
            mask = pos.unsqueeze(0) < lengths.unsqueeze(1)  # (B, L)
            gather = gather.masked_fill(~mask, 0)
            decode_gather = gather.view(-1).to(dev, non_blocking=True)
            decode_mask = mask.view(len(decodes), 1, 1, length).to(dev, non_blocking=True)
        ctx = StepContext(self, torch.tensor(slots, dtype=torch.long).to(dev, non_blocking=True),
                          len(decodes), decode_gather, decode_mask, prefills)
        input_ids = torch.tensor(ids, dtype=torch.long).to(dev, non_blocking=True)
        pos_t = torch.tensor(positions, dtype=torch.long).to(dev, non_blocking=True)
        hidden = self.model(input_ids, pos_t, ctx)  # (T, C)
        if not sample_rows:
            return {}
        rows = torch.tensor(sample_rows, dtype=torch.long).to(dev, non_blocking=True)
        logits = self.model.logits(hidden.index_select(0, rows))  # (N, V) fp32
        tokens = self.sampler(logits, sample_seqs)
        return {seq.seq_id: tok for seq, tok in zip(sample_seqs, tokens)}

    def release(self, seq_id: int) -> None:
        """Forget per-request sampling state of a finished sequence."""
        self.sampler.release(seq_id)
