"""The one module that owns tensors: the KV cache, the attention context, the forward pass.

Two KV stores, both preallocated:
- Pages: per layer a flat table of `num_blocks * block_size` slots, (S, Hkv, D), sized by
  the named KV budget. Position p of a sequence lives in slot
  `block_table[p // bs] * bs + p % bs`. This is what the block manager accounts for and
  what the prefix cache shares between requests.
- Rows: per layer (R, Hkv, row_len, D), one contiguous row per running sequence, as
  long as the longest sequence allowed. On a CPU they are reserved, not committed: an
  anonymous mapping whose zero pages take RAM only as sequences write into them, so no
  row ever has to grow (growing by reallocating stalled every running conversation for
  over a second at 256 -> 512 positions). Rows lead, heads follow, so the decodes' slice
  of rows [0, span) folds into one matmul batch without a copy. Every
  new K/V goes to both; attention reads the rows. On a CPU, gathering scattered blocks
  into a padded batch every layer of every step cost as much as the matmuls; a row is
  read in place. A row is filled from the pages once, when a sequence starts from a
  cached prefix (or after preemption), and is rewritten token by token after that.

A step packs every scheduled token (decodes first, then prefill chunks) into one flat
forward pass, so the weights are read once for the whole batch. Attention then splits:
all decodes in one batched attention (two matmuls) over their rows with a length mask; each prefill chunk on
its own, causally over its row's prefix plus itself.
"""
from __future__ import annotations

import math
import mmap
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from npc.engine import crossover
from npc.engine.model import Transformer, fuse_projections
from npc.engine.quant import quantize_int8
from npc.engine.sampling import Sampler
from npc.engine.scheduler import Work
from npc.engine.sequence import Sequence, Status


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
    rows: slice  # this chunk's tokens in the packed batch
    row: int  # its sequence's KV row
    start: int  # position of its first token
    mask: torch.Tensor | None = None  # (n, start + n) causal mask over its row (None from position 0)


@dataclass(slots=True)
class _Shared:
    """Decodes whose sequences share their first `prefix` positions (the same cached blocks)."""

    tokens: slice  # their tokens in the packed batch, contiguous
    rows: torch.Tensor  # (m,) their KV rows
    first_row: int  # any member's row: all hold the same prefix K/V
    prefix: int  # shared positions [0, prefix)
    suffix: int  # longest private tail, positions [prefix, prefix + suffix)
    mask: torch.Tensor  # (1, m, 1, suffix): 0 where a member's tail exists, else -inf


def _reserved_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero tensor whose pages, on a CPU, are committed only when first written.

    An anonymous mapping reads as zeros and takes RAM page by page as it is written (torch.zeros
    would write every byte up front). Huge pages are declined: with them the first token of a
    row committed 2 MiB per layer and head, over 300 MiB for one short conversation.
    """
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    buf = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    # The tensor holds a reference to `buf`, which unmaps when the last view of it goes.
    return torch.frombuffer(buf, dtype=torch.uint8, count=nbytes).view(dtype).view(shape)


class StepContext:
    """The AttentionContext for one packed forward pass: stores new K/V, attends over rows."""

    def __init__(self, runner: "Runner", slots: torch.Tensor, row_index: torch.Tensor,
                 num_decodes: int, decode_rows: torch.Tensor | None,
                 span: int, length: int, decode_mask: torch.Tensor | None, prefills: list[_Prefill],
                 shared: list[_Shared]) -> None:
        self.runner = runner
        self.slots = slots  # (T,) page slot of each packed token
        # (T * Hkv,) where token t's head h goes in a layer's rows seen as (R * Hkv * row_len, D):
        # (row_t * Hkv + h) * row_len + pos_t.
        self.row_index = row_index
        self.num_decodes = num_decodes
        self.decode_rows = decode_rows  # (B,) row of each decode
        self.span = span  # decodes use rows [0, span)
        self.length = length  # longest decode context
        self.decode_mask = decode_mask  # (span, 1, 1, length): 0 where attention may look, else -inf
        self.prefills = prefills
        self.shared = shared

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D); stores k/v in the cache first."""
        r = self.runner
        r.k_pages[layer].index_copy_(0, self.slots, k)
        r.v_pages[layer].index_copy_(0, self.slots, v)
        rk, rv = r.k_rows[layer], r.v_rows[layer]  # (R, Hkv, row_len, D)
        # One index_copy_ on a flat view: ~5x cheaper than advanced-index assignment.
        d = k.shape[-1]
        rk.view(-1, d).index_copy_(0, self.row_index, k.reshape(-1, d))
        rv.view(-1, d).index_copy_(0, self.row_index, v.reshape(-1, d))
        hq, d = q.shape[1], q.shape[2]
        hkv = k.shape[1]
        group = hq // hkv
        out = torch.empty_like(q)
        b = self.num_decodes
        if b:
            # Each KV head's G query heads act as G query positions of that head, so rows
            # are used in place with no repeat for grouped-query attention. Rows in the span
            # that are not decoding this step get zero queries and a harmless mask.
            qd = q[:b].view(b, hkv, group, d)  # (B, Hkv, G, D)
            if self.span == b and self.decode_rows is None:
                qpad = qd
            else:
                qpad = q.new_zeros(self.span, hkv, group, d)
                qpad[self.decode_rows] = qd
            # (span, Hkv, L, D) views whose two batch dims fold into one without a copy
            # (rows are laid out row-major over heads), whatever the span.
            kd = rk[:self.span, :, :self.length]
            vd = rv[:self.span, :, :self.length]
            # Plain matmuls: on CPU they beat SDPA's masked kernel for one query per row.
            scores = torch.matmul(qpad, kd.transpose(-1, -2)).mul_(d ** -0.5)  # (span, Hkv, G, L)
            scores += self.decode_mask
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(vd.dtype)
            od = torch.matmul(probs, vd)  # (span, Hkv, G, D)
            if qpad is not qd:
                od = od[self.decode_rows]
            out[:b] = od.reshape(b, hq, d)
        for g in self.shared:
            out[g.tokens] = self._attend_shared(g, q[g.tokens], rk, rv)
        for p in self.prefills:
            qp = q[p.rows].transpose(0, 1).unsqueeze(0)  # (1, Hq, n, D)
            n = qp.shape[2]
            if p.start == 0:
                kp = k[p.rows].transpose(0, 1).unsqueeze(0)  # (1, Hkv, n, D)
                vp = v[p.rows].transpose(0, 1).unsqueeze(0)
                op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)
            else:
                end = p.start + n
                kp = rk[p.row, :, :end].unsqueeze(0)  # (1, Hkv, end, D)
                vp = rv[p.row, :, :end].unsqueeze(0)
                op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=p.mask, enable_gqa=True)
            out[p.rows] = op.squeeze(0).transpose(0, 1)
        return out

    def _attend_shared(self, g: _Shared, q: torch.Tensor, rk: torch.Tensor, rv: torch.Tensor) -> torch.Tensor:
        """Decode attention for a group sharing a prefix: q (m, Hq, D) -> (m, Hq, D).

        The shared prefix's K/V is read once for the whole group (one matmul with m * G
        query rows) instead of once per member; the private tails are gathered small. One
        softmax spans both parts, so the result equals attending over each full row.
        """
        m, hq, d = q.shape
        hkv = rk.shape[1]
        group = hq // hkv
        scale = d ** -0.5
        qg = q.view(m, hkv, group, d).transpose(0, 1)  # (Hkv, m, G, D)
        kp = rk[g.first_row, :, :g.prefix]  # (Hkv, P, D)
        vp = rv[g.first_row, :, :g.prefix]
        tail = slice(g.prefix, g.prefix + g.suffix)
        ks = rk[:, :, tail].index_select(0, g.rows).transpose(0, 1)  # (Hkv, m, S, D)
        vs = rv[:, :, tail].index_select(0, g.rows).transpose(0, 1)
        sp = torch.matmul(qg.reshape(hkv, m * group, d), kp.transpose(-1, -2)).view(hkv, m, group, g.prefix)
        ss = torch.matmul(qg, ks.transpose(-1, -2)).mul_(scale) + g.mask  # (Hkv, m, G, S)
        scores = torch.cat((sp.mul_(scale), ss), dim=-1)  # (Hkv, m, G, P + S)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(vp.dtype)
        pp = probs[..., :g.prefix].reshape(hkv, m * group, g.prefix)
        og = torch.matmul(pp, vp).view(hkv, m, group, d) + torch.matmul(probs[..., g.prefix:], vs)
        return og.transpose(0, 1).reshape(m, hq, d)


class Runner:
    """Runs scheduled work through the model and samples next tokens."""

    def __init__(self, model: Transformer, *, num_blocks: int, block_size: int, max_running: int,
                 row_len: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 int8_max_rows: int | None = None, int8_head_rows: int | None = None,
                 max_pass_tokens: int = crossover.ROWS[-1]) -> None:
        """`int8_max_rows` not None: run a weight-only int8 copy of the model (fp32 on the CPU
        only), with the int8 kernel for passes of up to that many tokens (the output head:
        up to `int8_head_rows`, default the same); -1 for either: measured on this CPU for
        passes of up to `max_pass_tokens` (npc/engine/crossover.py)."""
        if min(num_blocks, block_size, max_running, row_len) < 1:
            raise ValueError("num_blocks, block_size, max_running and row_len must be >= 1")
        self.device = torch.device(device)
        self.dtype = dtype
        model = model.to(device=self.device, dtype=dtype)
        # The engine's working copy: projections fused (or int8), the caller's model unchanged.
        if int8_max_rows is None:
            self.model = fuse_projections(model).eval()
        else:
            head_rows = int8_max_rows if int8_head_rows is None else int8_head_rows
            self.model = quantize_int8(model, max_kernel_rows=max(int8_max_rows, 0),
                                       head_kernel_rows=max(head_rows, 0)).eval()
            # The head sees one row a sampling sequence: at most max_running of them.
            crossover.tune_model(self.model, projections=int8_max_rows == -1, head=head_rows == -1,
                                 max_rows=max_pass_tokens, head_rows=min(max_running, max_pass_tokens))
        cfg = model.cfg
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.row_len = row_len
        pages = (cfg.num_layers, num_blocks * block_size, cfg.num_kv_heads, cfg.head_dim)
        self.k_pages = torch.zeros(pages, dtype=dtype, device=self.device)  # (L, S, Hkv, D)
        self.v_pages = torch.zeros(pages, dtype=dtype, device=self.device)
        self.max_running = max_running
        rows = (cfg.num_layers, max_running, cfg.num_kv_heads, row_len, cfg.head_dim)
        self.k_rows = _reserved_zeros(rows, dtype, self.device)  # (L, R, Hkv, row_len, D)
        self.v_rows = _reserved_zeros(rows, dtype, self.device)
        self._row_seq: list[Sequence | None] = [None] * max_running
        self._row_of: dict[int, int] = {}  # seq_id -> row
        self._filled: dict[int, int] = {}  # seq_id -> positions of its row holding valid K/V
        self.sampler = Sampler(self.device)
        # Decodes sharing at least this many cached prefix tokens attend to them together
        # (None: never). Off by default: see EngineSettings.share_prefix_attention.
        self.min_shared_prefix: int | None = None
        self.shared_decodes = 0  # decodes served through a shared prefix (for metrics and tests)

    @property
    def cache_bytes(self) -> int:
        """Memory reserved for the KV pages and rows (rows commit RAM only as they are written)."""
        return sum(t.numel() * t.element_size() for t in (self.k_pages, self.v_pages, self.k_rows, self.v_rows))

    # -- rows -----------------------------------------------------------------------------
    def _row(self, seq: Sequence) -> int:
        row = self._row_of.get(seq.seq_id)
        if row is not None:
            return row
        for row, holder in enumerate(self._row_seq):
            # A preempted or finished holder gives its row up.
            if holder is None or holder.status is not Status.RUNNING:
                if holder is not None:
                    self._free_row(holder.seq_id)  # a preempted holder keeps its sampling state
                self._row_seq[row] = seq
                self._row_of[seq.seq_id] = row
                self._filled[seq.seq_id] = 0
                return row
        raise RuntimeError("more running sequences than KV rows")

    def _fill(self, seq: Sequence, row: int, start: int) -> None:
        """Copy positions [filled, start) of `seq` from the pages into its row (prefix hits)."""
        filled = min(self._filled[seq.seq_id], start)
        # Slice by runs of adjacent slots (blocks are mostly allocated in order): a strided
        # slice copy is several times faster than gathering the slots one by one.
        for pos, slot, n in self._slot_runs(seq.block_table, filled, start):
            # (L, n, Hkv, D) -> (L, Hkv, n, D)
            self.k_rows[:, row, :, pos:pos + n] = self.k_pages[:, slot:slot + n].transpose(1, 2)
            self.v_rows[:, row, :, pos:pos + n] = self.v_pages[:, slot:slot + n].transpose(1, 2)
        self._filled[seq.seq_id] = start

    def _free_row(self, seq_id: int) -> None:
        row = self._row_of.pop(seq_id, None)
        if row is not None:
            self._row_seq[row] = None
        self._filled.pop(seq_id, None)

    def release(self, seq_id: int) -> None:
        """Forget a finished request: its row and its sampling state."""
        self._free_row(seq_id)
        self.sampler.release(seq_id)

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(self.device, non_blocking=True)

    def _length_mask(self, lens: list[int], width: int) -> torch.Tensor:
        """(len(lens), width) additive mask: 0 before each length, -inf after."""
        visible = torch.arange(width).unsqueeze(0) < torch.tensor(lens).unsqueeze(1)
        mask = torch.zeros(len(lens), width).masked_fill_(~visible, float("-inf"))
        return mask.to(self.device, dtype=self.dtype, non_blocking=True)

    def _slots(self, table: list[int], start: int, stop: int) -> list[int]:
        bs = self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, stop)]

    def _slot_runs(self, table: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
        """Positions [start, stop) as runs of adjacent page slots: (position, slot, length)."""
        bs = self.block_size
        runs: list[tuple[int, int, int]] = []
        pos = start
        while pos < stop:
            n = min(bs - pos % bs, stop - pos)
            slot = table[pos // bs] * bs + pos % bs
            if runs and runs[-1][1] + runs[-1][2] == slot:
                p0, s0, n0 = runs[-1]
                runs[-1] = (p0, s0, n0 + n)
            else:
                runs.append((pos, slot, n))
            pos += n
        return runs

    def _group_decodes(self, decodes: list[Work]) -> tuple[list[Work], list[tuple[list[Work], int]]]:
        """Split decodes into plain ones and groups sharing a long cached prefix (same blocks)."""
        if self.min_shared_prefix is None:
            return decodes, []
        bs = self.block_size
        least = -(-self.min_shared_prefix // bs)  # blocks
        plain: list[Work] = []
        groups: list[tuple[list[Work], int]] = []
        # Sorting by block table puts sequences with long common prefixes side by side.
        ordered = sorted(decodes, key=lambda w: w.seq.block_table)
        run: list[Work] = []
        common = 0

        def close() -> None:
            if len(run) >= 2:
                groups.append((list(run), common * bs))
            else:
                plain.extend(run)

        for w in ordered:
            # Only blocks wholly before the current token can be shared (and cached).
            own = (len(w.seq.tokens) - 1) // bs
            if run:
                ref = run[0].seq.block_table
                table = w.seq.block_table
                n = 0
                limit = min(common, own)
                while n < limit and table[n] == ref[n]:
                    n += 1
                if n >= least:
                    run.append(w)
                    common = n
                    continue
                close()
            run, common = [w], own
        if run:
            close()
        return plain, groups

    # -- the step -------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, work: list[Work]) -> dict[int, int]:
        """One forward pass over `work`; returns {seq_id: sampled token} for pieces that reach their end."""
        if not work:
            return {}
        # A piece of one token at the sequence's end attends like a decode, whatever its history.
        decodes = [w for w in work if w.count == 1 and w.samples]
        others = [w for w in work if not (w.count == 1 and w.samples)]
        decodes, groups = self._group_decodes(decodes)
        grouped = [w for members, _ in groups for w in members]
        self.shared_decodes += len(grouped)
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        row_of_token: list[int] = []
        prefills: list[_Prefill] = []
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        decode_rows: list[int] = []
        decode_lens: list[int] = []
        for i, w in enumerate(decodes + grouped + others):
            seq, a, b = w.seq, w.start, w.start + w.count
            if b > self.row_len:
                raise RuntimeError(f"sequence of {b} tokens exceeds the KV row length {self.row_len}")
            row = self._row(seq)
            self._fill(seq, row, a)
            self._filled[seq.seq_id] = b
            t0 = len(ids)
            ids += seq.tokens[a:b]
            positions += range(a, b)
            slots += self._slots(seq.block_table, a, b)
            row_of_token += [row] * (b - a)
            if w.samples:
                sample_rows.append(len(ids) - 1)
                sample_seqs.append(seq)
            if i < len(decodes):
                decode_rows.append(row)
                decode_lens.append(b)
            elif i >= len(decodes) + len(grouped):
                # Query i sits at position a + i and sees positions <= a + i.
                causal = (torch.arange(b, device=self.device).unsqueeze(0)
                          <= torch.arange(a, b, device=self.device).unsqueeze(1)) if a else None  # (n, b)
                prefills.append(_Prefill(slice(t0, len(ids)), row, a, causal))
        tensor = self._tensor
        span = length = 0
        rows_t = mask = None
        if decodes:
            span, length = max(decode_rows) + 1, max(decode_lens)
            lens = [1] * span  # rows not decoding this step may look at position 0 only
            for row, n in zip(decode_rows, decode_lens):
                lens[row] = n
            mask = self._length_mask(lens, length).view(span, 1, 1, length)
            if decode_rows != list(range(span)):
                rows_t = tensor(decode_rows)
        shared: list[_Shared] = []
        t0 = len(decodes)
        for members, prefix in groups:
            m = len(members)
            lens = [len(w.seq.tokens) - prefix for w in members]
            tail = max(lens)
            rows = [self._row_of[w.seq.seq_id] for w in members]
            shared.append(_Shared(slice(t0, t0 + m), tensor(rows), rows[0], prefix, tail,
                                  self._length_mask(lens, tail).view(1, m, 1, tail)))
            t0 += m
        positions_t = tensor(positions)
        hkv = self.model.cfg.num_kv_heads
        heads = torch.arange(hkv, device=self.device)
        row_index = ((tensor(row_of_token)[:, None] * hkv + heads) * self.row_len
                     + positions_t[:, None]).reshape(-1)  # (T * Hkv,)
        ctx = StepContext(self, tensor(slots), row_index, len(decodes),
                          rows_t, span, length, mask, prefills, shared)
        hidden = self.model(tensor(ids), positions_t, ctx)  # (T, C)
        if not sample_rows:
            return {}
        logits = self.model.logits(hidden.index_select(0, tensor(sample_rows)))  # (N, V) fp32
        tokens = self.sampler(logits, sample_seqs)
        return {seq.seq_id: tok for seq, tok in zip(sample_seqs, tokens)}
