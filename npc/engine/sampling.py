"""Turning a batch of logits into next tokens, each row with its own request's settings.

Greedy rows take one batched argmax. Other rows go through repetition penalty,
temperature, top-k and top-p, then draw from their own `torch.Generator` when the request
has a seed (so a seeded request samples the same tokens whatever else is in the batch).
Allowed-token masks apply before everything else, greedy included.
"""
from __future__ import annotations

import torch

from npc.engine.sequence import Sequence


class Sampler:
    """Per-request sampling state (generators, cached masks) plus the batched sampling step."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._generators: dict[int, torch.Generator] = {}
        self._allowed: dict[int, torch.Tensor] = {}  # seq_id -> ids tensor for fixed sets
        self.errors: dict[int, str] = {}  # seq_id -> why its allowed-token hook failed this step

    def take_errors(self) -> dict[int, str]:
        """Requests whose hook failed since the last call, with the reason."""
        errors, self.errors = self.errors, {}
        return errors

    def release(self, seq_id: int) -> None:
        """Forget a finished request's state."""
        self._generators.pop(seq_id, None)
        self._allowed.pop(seq_id, None)

    def _generator(self, seq: Sequence) -> torch.Generator | None:
        if seq.params.seed is None:
            return None
        gen = self._generators.get(seq.seq_id)
        if gen is None:
            gen = torch.Generator(device=self.device).manual_seed(seq.params.seed)
            self._generators[seq.seq_id] = gen
        return gen

    def _allowed_ids(self, seq: Sequence) -> torch.Tensor | None:
        allowed = seq.params.allowed
        if allowed is None:
            return None
        if callable(allowed):
            ids = allowed(seq.completion)
            if ids is None:
                return None
            ids = list(ids)
            if not ids:
                raise ValueError(f"the allowed-token hook of request {seq.seq_id} allowed nothing")
            return torch.tensor(ids, dtype=torch.long, device=self.device)
        cached = self._allowed.get(seq.seq_id)
        if cached is None:
            cached = torch.tensor(sorted(allowed), dtype=torch.long, device=self.device)
            self._allowed[seq.seq_id] = cached
        return cached

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """logits (N, V) fp32, one row per sequence in `seqs` -> N token ids. May modify logits."""
        vocab = logits.shape[1]
        for i, seq in enumerate(seqs):
            try:
                ids = self._allowed_ids(seq)
            except Exception as exc:  # noqa: BLE001 - a caller's hook must not fail the batch
                # Only this request fails (the engine ends it with "error"); its row samples freely.
                self.errors[seq.seq_id] = f"allowed-token hook failed: {exc!r}"
                ids = None
            if ids is not None:
                ids = ids[(ids >= 0) & (ids < vocab)]
                if ids.numel() == 0:
                    self.errors[seq.seq_id] = "no allowed token is in the model's vocabulary"
                    continue
                row = torch.full((vocab,), float("-inf"), device=logits.device)
                row[ids] = logits[i, ids]
                logits[i] = row
            rp = seq.params.repetition_penalty
            if rp != 1.0:
                seen = torch.tensor(sorted(set(seq.tokens)), dtype=torch.long, device=logits.device)
                vals = logits[i, seen]
                logits[i, seen] = torch.where(vals > 0, vals / rp, vals * rp)
        out = torch.argmax(logits, dim=-1)  # (N,)
        drawn = [(i, self._draw(logits[i], seq)) for i, seq in enumerate(seqs) if not seq.params.greedy]
        if drawn:
            rows = torch.tensor([i for i, _ in drawn], device=logits.device)
            out[rows] = torch.stack([t for _, t in drawn])
        return out.tolist()

    def _draw(self, row: torch.Tensor, seq: Sequence) -> torch.Tensor:
        """Sample one token id (0-d tensor) from a row of logits (V,)."""
        params = seq.params
        row = row / params.temperature
        if 0 < params.top_k < row.shape[0]:
            kth = torch.topk(row, params.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_vals, order = torch.sort(row, descending=True)
            probs = torch.softmax(sorted_vals, dim=-1)
            # Drop a token when the tokens ranked above it already cover top_p.
            drop = torch.cumsum(probs, dim=-1) - probs > params.top_p
            sorted_vals = sorted_vals.masked_fill(drop, float("-inf"))
            row = torch.empty_like(row).scatter_(0, order, sorted_vals)
        probs = torch.softmax(row, dim=-1)
        return torch.multinomial(probs, 1, generator=self._generator(seq))[0]
