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
