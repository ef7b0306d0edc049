"""`python -m npc chat`, run in-process with the tiny model."""
from __future__ import annotations

import pytest

from npc.__main__ import main


def test_chat_streams_one_answer_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """The chat command prints the answer (and only the answer) on stdout and a summary on stderr."""
    assert main(["chat", "--model", "tiny", "--threads", "1", "--system", "You are the smith.",
                 "--message", "Hello", "--max-tokens", "8", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert out.endswith("\n") and len(out) > 1
    assert "prompt +" in err and ("length" in err or "stop" in err)


def test_chat_requires_a_message() -> None:
    """Without --message the command refuses with a usage error."""
    with pytest.raises(SystemExit) as exc:
        main(["chat", "--model", "tiny"])
    assert exc.value.code == 2


def test_bench_prints_figures_and_a_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The engine bench runs all its phases and ends with one JSON object holding every figure."""
    import json

    assert main(["bench", "--model", "tiny", "--threads", "1", "--concurrency", "4", "--npcs", "2",
                 "--share-prefix-attention", "--max-tokens", "4", "--persona-repeat", "1", "--arrival-ms", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(last)
    assert figures["concurrency"] == 4 and figures["agg_tok_s"] > 0
    assert figures["prefix_hit_rate"] > 0 and figures["ttft_warm_s"] > 0
