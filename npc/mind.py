"""An NPC's mind: what it knows (fixed for every player) and how it turns a line into a prompt.

Shared by the in-world service and the quality benchmark, so both ask the model the same way.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from npc.ending import Ending, fact_words
from npc.knowledge import relevant, world_facts
from npc.persona import Persona
from npc.prompt import Message, Prompt, PromptBudget, Recollection, Situation, build_prompt, fixed_part


class Mind:
    """One NPC's knowledge and prompt assembly; pure, no engine."""

    def __init__(self, persona: Persona, config, personas: Sequence[Persona]) -> None:
        self.persona = persona
        derived = world_facts(persona, config, personas)
        self.facts: list[str] = list(persona.lore) + derived  # what retrieval draws from
        self.fixed: list[Message] = fixed_part(persona, derived)  # the shared prompt prefix

    def prompt(self, situation: Situation, memory: Recollection, line: str, *, context_tokens: int,
               facts_per_answer: int, count: Callable[[list[Message]], int]) -> Prompt:
        """The prompt for one answer to `line`, within the context budget."""
        facts = relevant(line, self.facts + self._remembered(situation, memory), k=facts_per_answer)
        budget = PromptBudget(context_tokens, self.persona.reply_tokens)
        return build_prompt(self.persona, self.fixed, situation, memory, line, facts,
                            budget=budget, count=count)

    @staticmethod
    def _remembered(situation: Situation, memory: Recollection) -> list[str]:
        """Facts from memory that a line may ask about ("do you remember my name?")."""
        if not memory.met_before:
            return []
        name = situation.player_name
        # Phrased as the answer itself: measured, the default model repeats "The traveller's
        # name is Alice." when asked, and ignores "you remember them: their name is Alice".
        facts = [f"The traveller's name is {name}."]
        if memory.summary:
            facts.append(f"You remember about {name}: {memory.summary}")
        return facts

    def ending(self, prompt: Prompt, line: str, *, soft_stop: float, fact_stop: bool = True) -> Ending:
        """Where this answer may end early (see `npc.ending`): past `soft_stop` of the reply
        budget at a sentence end, or, with `fact_stop`, after the sentence carrying a fact."""
        facts = fact_words(prompt.facts, line, self.persona.name) if fact_stop else frozenset()
        return Ending(soft_after=int(self.persona.reply_tokens * soft_stop), facts=facts)

    def stop_strings(self, speaker_name: str) -> tuple[str, ...]:
        """Where the answer is cut: the first sign of the model speaking for the player."""
        return (f"\n{speaker_name}:", f"{speaker_name}:", "\nUser:", "\nPlayer:",
                "<|im_start|>", "<|im_end|>")
