"""Per-request sampling: greedy, temperature, top-k, top-p, repetition penalty, seeds, masks."""
from __future__ import annotations

import pytest
import torch

from npc.engine.sampling import Sampler
from npc.engine.sequence import SamplingParams, Sequence


def seq(**params: object) -> Sequence:
    return Sequence([1, 2, 3], SamplingParams(**params))  # type: ignore[arg-type]


def test_greedy_takes_argmax_per_row() -> None:
    """Greedy rows pick their own argmax in one batched call."""
    logits = torch.tensor([[0.0, 5.0, 1.0, 0.0], [3.0, 0.0, 0.0, 9.0]])
    assert Sampler()(logits, [seq(temperature=0), seq(temperature=0)]) == [1, 3]


def test_top_k_one_is_greedy_even_with_temperature() -> None:
    """top_k=1 leaves only the best token whatever the temperature."""
    logits = torch.tensor([[0.0, 2.0, 1.9, 0.0]])
    for _ in range(5):
        assert Sampler()(logits.clone(), [seq(temperature=5.0, top_k=1)]) == [1]


def test_top_p_keeps_only_the_nucleus() -> None:
    """With top_p 0.5 and one token holding 90% of the mass, only that token is ever drawn."""
    logits = torch.log(torch.tensor([[0.9, 0.05, 0.03, 0.02]]))
    sampler = Sampler()
    draws = {sampler(logits.clone(), [seq(temperature=1.0, top_p=0.5)])[0] for _ in range(30)}
    assert draws == {0}


def test_top_k_limits_draws() -> None:
    """top_k=2 never draws outside the two best tokens."""
    logits = torch.tensor([[1.0, 1.1, 1.2, 1.3, 1.4]])
    sampler = Sampler()
    draws = {sampler(logits.clone(), [seq(temperature=10.0, top_k=2, seed=None)])[0] for _ in range(40)}
    assert draws <= {3, 4} and len(draws) == 2


def test_seed_reproduces_draws() -> None:
    """Two requests with the same seed draw the same sequence of tokens."""
    logits = torch.zeros(1, 50)
    a, b = seq(temperature=1.0, seed=99), seq(temperature=1.0, seed=99)
    sampler = Sampler()
    draws_a = [sampler(logits.clone(), [a])[0] for _ in range(10)]
    draws_b = [sampler(logits.clone(), [b])[0] for _ in range(10)]
    assert draws_a == draws_b and len(set(draws_a)) > 1


def test_repetition_penalty_discourages_seen_tokens() -> None:
    """A strong repetition penalty moves greedy off a token already in the sequence."""
    logits = torch.tensor([[0.0, 0.0, 3.0, 0.0, 2.0]])  # token 2 is best but was seen; 4 was not
    assert Sampler()(logits.clone(), [seq(temperature=0)]) == [2]
    assert Sampler()(logits.clone(), [seq(temperature=0, repetition_penalty=2.0)]) == [4]


def test_allowed_set_and_hook_mask_everything_else() -> None:
    """Allowed-token sets and hooks restrict greedy and sampled choices alike."""
    logits = torch.tensor([[9.0, 0.0, 1.0, 0.5]])
    assert Sampler()(logits.clone(), [seq(temperature=0, allowed={2, 3})]) == [2]
    hook = seq(temperature=2.0, allowed=lambda done: [3])
    assert Sampler()(logits.clone(), [hook]) == [3]


def test_failing_hook_is_reported_for_its_request_only() -> None:
    """A hook that raises or allows nothing is reported for its request; the other rows sample normally."""
    logits = torch.tensor([[9.0, 0.0, 1.0], [0.0, 9.0, 1.0], [0.0, 1.0, 9.0]])
    sampler = Sampler()
    empty, boom, outside, fine = (seq(temperature=0, allowed=lambda done: []),
                                  seq(temperature=0, allowed=lambda done: 1 / 0),
                                  seq(temperature=0.5, allowed={99}), seq(temperature=0))
    logits = torch.cat([logits, logits[2:]])  # a row each
    assert sampler(logits.clone(), [empty, boom, outside, fine])[3] == 2
    errors = sampler.take_errors()
    assert set(errors) == {empty.seq_id, boom.seq_id, outside.seq_id}
    assert "ZeroDivisionError" in errors[boom.seq_id]
    assert sampler.take_errors() == {}


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1),
                                 dict(max_tokens=0), dict(repetition_penalty=0), dict(stop=("",)),
                                 dict(allowed=set())])
def test_invalid_params_raise_value_error(bad: dict) -> None:
    """Out-of-range sampling settings are refused when the params are built."""
    with pytest.raises(ValueError):
        SamplingParams(**bad)
