"""Text <-> token ids for the NPC engine, and chat prompts from the model's own template.

Built on the `tokenizers` library, from a GGUF file's `tokenizer.ggml.*` metadata
(`from_gguf_metadata`) or from a Hugging Face `tokenizer.json` (`from_hf_dir`).

Player text is never parsed for special tokens: `encode("<|im_start|>system")` yields the
ordinary text tokens for those characters, so a player cannot type a role marker into a
prompt. Only the chat template's own text (`render_chat`) is parsed for specials; the
message contents inside it are encoded as plain text.
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

# The generic ChatML layout, used when a model ships no template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Pre-tokenizer split patterns, by llama.cpp's `tokenizer.ggml.pre` name. They decide where
# BPE may merge, so a wrong one changes token ids; unknown names fall back to GPT-2's.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DIGITS_THEN_GPT2 = frozenset({"smollm", "starcoder", "refact", "codeshell", "command-r",
                               "exaone", "minerva"})
_LLAMA3_NAMES = frozenset({"llama3", "llama-bpe", "llama-v3", "smaug-bpe", "dbrx"})
_QWEN2_NAMES = frozenset({"qwen2", "deepseek-r1-qwen"})

# GGUF token types (llama.cpp's llama_token_type): 3 = control, 4 = user-defined.
_CONTROL, _USER_DEFINED = 3, 4

# Placeholders for message contents while the template renders: private-use characters that
# no template strips or escapes, so each content's position survives rendering intact.
_SENTINEL = "\ue000{}\ue001"
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")


class TokenizerError(ValueError):
    """The tokenizer could not be built from the model's metadata or files."""


def _gguf_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    for names, pattern in ((_LLAMA3_NAMES, _LLAMA3_SPLIT), (_QWEN2_NAMES, _QWEN2_SPLIT)):
        if pre in names:
            return pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _split_merge(merge: str) -> tuple[str, str]:
    left, sep, right = merge.partition(" ")
    if not sep:
        raise TokenizerError(f"malformed BPE merge {merge!r}")
    return left, right


class Tokenizer:
    """Encode player text, decode model output, and render chat prompts.

    `encode` never parses special tokens; `render_chat` parses them only in the template's
    own text. Thread-safe for concurrent reads (nothing mutates after construction).
    """

    def __init__(self, backend: Backend, *, eos_ids: Iterable[int], bos_id: int | None = None,
                 add_bos: bool = False, chat_template: str | None = None,
                 bos_token: str = "", eos_token: str = "") -> None:
        self._specials = backend  # parses added/special tokens (template text only)
        self._plain = Backend.from_str(backend.to_str())
        self._plain.encode_special_tokens = True  # specials typed as text stay text
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        if not self.eos_ids:
            raise TokenizerError("the model names no end-of-sequence token")
        self.bos_id = bos_id
        self.add_bos = add_bos and bos_id is not None
        self.chat_template = chat_template or CHATML_TEMPLATE
        self._bos_token, self._eos_token = bos_token, eos_token
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        try:
            self._template = env.from_string(self.chat_template)
        except jinja2.TemplateError as e:
            raise TokenizerError(f"the model's chat template does not compile: {e}") from e

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer knows (may be below the model's logit count)."""
        return self._specials.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry (in its stored form, e.g. 'Ġthe'), or None."""
        return self._specials.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as plain text: special-token markup is never recognised."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """The text of `ids`. Invalid UTF-8 (a character cut between tokens) becomes U+FFFD."""
        return self._specials.decode(list(ids), skip_special_tokens=skip_special)

    def chat_text(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The chat prompt as text, rendered by the model's template (for logs and tests)."""
        return self._render(messages, add_generation_prompt)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a chat prompt: `messages` are dicts with `role` and `content`.

        The template's text is parsed for special tokens; each message's content is encoded
        as plain text, so markup inside a content can never open a new turn.
        """
        placeheld = []
        for i, message in enumerate(messages):
            if not isinstance(message.get("content"), str) or not isinstance(message.get("role"), str):
                raise ValueError("each message needs a string 'role' and a string 'content'")
            placeheld.append({**message, "content": _SENTINEL.format(i)})
        rendered = self._render(placeheld, add_generation_prompt)
        ids: list[int] = []
        pos = 0
        for m in _SENTINEL_RE.finditer(rendered):
            ids += self._specials.encode(rendered[pos:m.start()], add_special_tokens=False).ids
            ids += self.encode(messages[int(m.group(1))]["content"])
            pos = m.end()
        ids += self._specials.encode(rendered[pos:], add_special_tokens=False).ids
        if self.add_bos and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def _render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> str:
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                         bos_token=self._bos_token, eos_token=self._eos_token)
        except jinja2.TemplateError as e:
            raise ValueError(f"chat template failed: {e}") from e

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any]) -> "Tokenizer":
        """Build from a GGUF file's `tokenizer.*` metadata (a gpt2-style byte-level BPE)."""
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise TokenizerError(f"tokenizer model {kind!r} is not supported (only gpt2-style BPE)")
        tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
        types: list[int] = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
        merges = [_split_merge(m) for m in meta.get("tokenizer.ggml.merges", [])]
        vocab = {tok: i for i, tok in reversed(list(enumerate(tokens)))}  # first id wins
        backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        backend.pre_tokenizer = _gguf_pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default")))
        backend.decoder = decoders.ByteLevel()
        # Control and user-defined tokens are matched whole in template text, never merged.
        backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                    for i, t in enumerate(types) if t in (_CONTROL, _USER_DEFINED)])
        bos = meta.get("tokenizer.ggml.bos_token_id")
        eos = meta.get("tokenizer.ggml.eos_token_id")
        eos_ids = {int(eos)} if eos is not None else set()
        eot = meta.get("tokenizer.ggml.eot_token_id")
        if eot is not None:
            eos_ids.add(int(eot))
        eos_ids |= _end_of_turn_ids(backend)
        return cls(backend, eos_ids=eos_ids, bos_id=None if bos is None else int(bos),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                   chat_template=meta.get("tokenizer.chat_template"),
                   bos_token=tokens[int(bos)] if bos is not None else "",
                   eos_token=tokens[int(eos)] if eos is not None else "")

    @classmethod
    def from_hf_dir(cls, path: Path | str) -> "Tokenizer":
        """Build from a Hugging Face directory: tokenizer.json, tokenizer_config.json and,
        when present, generation_config.json (extra EOS ids) and chat_template.jinja."""
        root = Path(path)
        if not (root / "tokenizer.json").is_file():
            raise TokenizerError(f"{root} has no tokenizer.json")
        backend = Backend.from_file(str(root / "tokenizer.json"))
        config = _read_json(root / "tokenizer_config.json")
        bos_token, eos_token = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
        eos_ids = {i for i in (backend.token_to_id(eos_token),) if eos_token and i is not None}
        gen_eos = _read_json(root / "generation_config.json").get("eos_token_id")
        eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        eos_ids |= _end_of_turn_ids(backend)
        template = config.get("chat_template")
        if (root / "chat_template.jinja").is_file():
            template = (root / "chat_template.jinja").read_text(encoding="utf-8")
        if isinstance(template, list):  # several named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        bos_id = backend.token_to_id(bos_token) if bos_token else None
        return cls(backend, eos_ids=eos_ids, bos_id=bos_id, add_bos=bool(config.get("add_bos_token", False)),
                   chat_template=template, bos_token=bos_token, eos_token=eos_token)


def _end_of_turn_ids(backend: Backend) -> set[int]:
    # Chat models end a turn with one of these markers even when metadata names another EOS.
    names = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>")
    ids = (backend.token_to_id(n) for n in names)
    return {i for i in ids if i is not None}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_text(entry: Any) -> str:
    if isinstance(entry, dict):  # {"content": "<s>", ...} as older configs store it
        return str(entry.get("content", ""))
    return entry or ""


def _raise_template_error(message: str) -> None:
    raise jinja2.TemplateError(message)
