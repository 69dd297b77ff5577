"""Text prompts for a pretrained LLM: an instruction template around the history's item tokens.

Rendering (``PromptConfig``; ``item(i)`` is the item's token strings, e.g. ``<a_12><b_7><c_201>``)::

    history = item_separator.join(item_format.replace("{item}", item(i)) for i in history, oldest first)
    user    = template.replace("{history}", history)
    text    = chat_template([system?, user], add_generation_prompt=True, **chat_template_kwargs) + response_prefix
              (chat off, or no chat template: (bos_token or "") + user + response_prefix)
    ids     = tokenizer(text, add_special_tokens=False).input_ids

The response that follows is the target item's tokens then the layout's EOS (OpenOneRec style with the
defaults: ``<|sid_begin|>`` ends the prompt, ``<a_..><b_..><c_..><|sid_end|>`` is the response).

Per prompt no tokenizer runs: ``text`` is cut at the history into a prefix and a suffix, and every item
block into ``item_format``'s text before and after ``{item}``; these pieces are tokenized ONCE and a
prompt is ``prefix + [before + item tokens + after] (+ separator between items) + suffix`` (one
vectorized concatenation). That equals tokenizing the whole text because the item tokens are added
special tokens: the tokenizer splits the text at them and never merges across. ``TextPrompt`` checks it
at construction on probe histories and raises when a template would break it (e.g. plain text glued to
an item without a special token between them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from recast_mcore.config.data import PromptConfig
from recast_mcore.data.tokens import ItemVocab, TokenLayout

VOCAB_FILE = "recast_vocab.json"
"""Written next to an expanded tokenizer: the TokenLayout and the item codes_per_level it was built for."""
_HISTORY = "\x00RECAST_HISTORY\x00"


def load_tokenizer(tokenizer_dir: str | Path):
    """The model's own Hugging Face tokenizer (local files only)."""
    from recast_mcore.rollout.cpu_bridge import declare_torchvision_ops_in_process

    declare_torchvision_ops_in_process()  # transformers' auto classes import torchvision (CPU wheels, see there)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def write_vocab_file(directory: Path, layout: TokenLayout, codes_per_level: list[int], **extra: Any) -> None:
    """``recast_vocab.json``: the layout of the expanded vocabulary (read back by ``read_vocab_file``)."""
    state = {"layout": layout.to_state(), "codes_per_level": list(codes_per_level), **extra}
    (directory / VOCAB_FILE).write_text(json.dumps(state, indent=2))


def read_vocab_file(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a tokenizer written by `convert_checkpoint.py from-hf`")
    state = json.loads(path.read_text())
    state["layout"] = TokenLayout.from_state(state["layout"])
    return state


def render_text(tokenizer, cfg: PromptConfig, history_text: str) -> str:
    """The prompt text of one history (module doc)."""
    user = cfg.template.replace("{history}", history_text)
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if cfg.chat_template == "on" and not has_chat:
        raise ValueError("data.prompt.chat_template is 'on' but the tokenizer has no chat template")
    if cfg.chat_template == "off" or not has_chat:
        return (tokenizer.bos_token or "") + user + cfg.response_prefix
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [{"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **cfg.chat_template_kwargs)
    return text + cfg.response_prefix


class TextPrompt:
    """``history item tokens [H, L] -> prompt ids`` from pieces tokenized once (module doc)."""

    def __init__(self, tokenizer, cfg: PromptConfig, vocab: ItemVocab):
        def ids(text: str) -> torch.Tensor:
            return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)

        prefix, suffix = render_text(tokenizer, cfg, _HISTORY).split(_HISTORY)
        before, after = cfg.item_format.split("{item}")
        self.prefix, self.suffix = ids(prefix), ids(suffix)
        self.before, self.after, self.separator = ids(before), ids(after), ids(cfg.item_separator)
        self._check(tokenizer, cfg, vocab)

    def __call__(self, items: torch.Tensor) -> list[int]:
        """items [H, L] int64 (H >= 1) -> prompt ids: prefix, then per item (separator,) before + item + after, suffix."""
        h = items.shape[0]
        if h == 0:
            raise ValueError("a text prompt needs at least one history item")
        blocks = torch.cat([self.separator.expand(h, -1), self.before.expand(h, -1), items, self.after.expand(h, -1)], 1)
        history = blocks.reshape(-1)[self.separator.numel():]  # no separator before the first item
        return torch.cat([self.prefix, history, self.suffix]).tolist()

    def _check(self, tokenizer, cfg: PromptConfig, vocab: ItemVocab) -> None:
        """The assembled ids equal the tokenizer's ids of the whole text on probe histories, else raise."""
        n = vocab.num_items
        for history in ([0], [0, n - 1], [n - 1, n // 2, 0]):
            text = render_text(tokenizer, cfg, cfg.item_separator.join(
                cfg.item_format.replace("{item}", vocab.item_string(i)) for i in history))
            want = tokenizer(text, add_special_tokens=False)["input_ids"]
            got = self(vocab.item_tokens[history])
            if got != want:
                raise ValueError(
                    "data.prompt: the template's text merges with the item tokens, so prompts cannot be assembled "
                    f"from pieces (history {history}: tokenizer gives {want[:40]}..., pieces give {got[:40]}...). "
                    "Put an added special token (e.g. <|sid_begin|>) or plain separators between text and items."
                )


def model_vocab(vocab: ItemVocab, cfg: PromptConfig) -> ItemVocab:
    """The dataset's items in the model's vocabulary: unchanged for ``items``; for ``text`` the layout of
    ``cfg.tokenizer_dir`` (checked against the tokenizer and the dataset) and its text prompt."""
    if cfg.format == "items":
        return vocab
    state = read_vocab_file(cfg.tokenizer_dir)
    if list(state["codes_per_level"]) != list(vocab.codes_per_level):
        raise ValueError(
            f"data.prompt.tokenizer_dir={cfg.tokenizer_dir} was built for codes_per_level {state['codes_per_level']}, "
            f"the prepared dataset has {vocab.codes_per_level}: re-run `convert_checkpoint.py from-hf --dataset` on this dataset"
        )
    tokenizer = load_tokenizer(cfg.tokenizer_dir)
    expanded = vocab.with_layout(state["layout"])
    check_tokenizer_layout(tokenizer, expanded, str(cfg.tokenizer_dir))
    return vocab.with_layout(state["layout"], TextPrompt(tokenizer, cfg, expanded))


def check_tokenizer_layout(tokenizer, vocab: ItemVocab, where: str) -> None:
    """Every appended token string has exactly the id the layout gives it, and nothing lies beyond."""
    base = vocab.layout.base_vocab_size
    got = tokenizer.convert_tokens_to_ids(vocab.appended_tokens)
    want = list(range(base, vocab.vocab_size))
    if got != want:
        bad = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
        raise ValueError(f"{where}: token {vocab.appended_tokens[bad]!r} has id {got[bad]} in the tokenizer, "
                         f"the vocabulary layout says {want[bad]}")
    if len(tokenizer) != vocab.vocab_size:
        raise ValueError(f"{where}: the tokenizer has {len(tokenizer)} tokens, the vocabulary layout {vocab.vocab_size}")
