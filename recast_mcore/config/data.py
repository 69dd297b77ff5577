"""Data configuration: which dataset, how it is filtered/split, and how items become semantic IDs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(kw_only=True)
class SyntheticConfig:
    """Embedded deterministic generator (no download)."""

    num_users: int = 2000
    """Number of synthetic users."""
    num_items: int = 1000
    """Number of synthetic items."""
    num_clusters: int = 20
    """Number of taste clusters users and items belong to."""
    mean_history: int = 20
    """Mean interactions per user (before k-core)."""
    popularity_alpha: float = 1.1
    """Zipf exponent of item popularity inside a cluster."""
    transition_prob: float = 0.15
    """Probability that the next item follows the sequential transition of the previous one."""
    num_successors: int = 10
    """Candidate successor items per item (Zipf-weighted) for the sequential transitions."""
    successor_alpha: float = 1.0
    """Zipf exponent of the successor weights: slot r of an item's successors has weight (r + 1)^-alpha
    (1.0 = the original generator; smaller spreads the probability over the successors, 0 = uniform)."""
    noise_prob: float = 0.1
    """Probability that a non-transition step picks a uniformly random item."""
    seed: int = 1234
    """Seed: the same seed gives byte-identical data."""


@dataclass(kw_only=True)
class SemanticIdConfig:
    """Residual k-means (RQ-KMeans) semantic IDs over item embeddings."""

    levels: int = 3
    """Number of residual-quantization levels L."""
    codes_per_level: int = 32
    """Codebook size K at every level."""
    normalize_residuals: bool = True
    """Scale every item's residual to unit length before each level's k-means (fewer collisions)."""
    embedding: Literal["cooccurrence_svd", "features"] = "cooccurrence_svd"
    """Where item embeddings come from: SVD of the TRAINING co-occurrence PMI matrix, or given features."""
    embedding_dim: int = 32
    """Dimension of the SVD item embeddings fed to RQ-KMeans (given features keep their own width)."""
    cooccurrence_window: int = 5
    """Two training items of one user co-occur when at most this many positions apart."""
    kmeans_iters: int = 30
    """Lloyd iterations per level."""
    seed: int = 0
    """Seed for k-means initialization."""


@dataclass(kw_only=True)
class PromptConfig:
    """How a user's history becomes the prompt's token ids (see data/prompts.py for the exact rendering).

    ``items`` (default, models trained from scratch): ``<bos>`` + the history's item tokens.
    ``text`` (a pretrained LLM imported with ``convert_checkpoint.py from-hf``): an instruction template
    around the history's item tokens, rendered with the model's own Hugging Face tokenizer (and its chat
    template), in which the item tokens are added special tokens.
    """

    format: Literal["items", "text"] = "items"
    """items: ``<bos>`` + item tokens (item-only vocabulary); text: the template below with the HF tokenizer."""
    tokenizer_dir: str = ""
    """Text prompts: the expanded tokenizer directory (``<from-hf out>/hf_tokenizer`` or a ``to-hf`` export),
    with its ``recast_vocab.json`` (where the item tokens sit)."""
    template: str = ("The user interacted with these items, oldest first: {history}\n"
                     "Which item will the user interact with next?")
    """User message; ``{history}`` is replaced by the rendered history items."""
    system: str = ""
    """System message of the chat ('' = none)."""
    item_format: str = "<|sid_begin|>{item}<|sid_end|>"
    """How one history item is written; ``{item}`` is its item tokens, e.g. ``<a_12><b_7><c_201>``."""
    item_separator: str = ", "
    """Text between two history items."""
    response_prefix: str = "<|sid_begin|>"
    """Text after the generation prompt, right before the response's item tokens."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """auto: use the tokenizer's chat template when it has one; on: require it; off: plain text
    (the tokenizer's bos token, if any, then the user message)."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=lambda: {"enable_thinking": False})
    """Extra arguments of ``apply_chat_template`` (Qwen3: ``enable_thinking: false`` writes an empty think block)."""

    @property
    def hf_tokenizer_dir(self) -> str:
        """The expanded tokenizer served with the model (text prompts), '' for item prompts."""
        return self.tokenizer_dir if self.format == "text" else ""

    def validate(self) -> None:
        if self.format == "text" and not self.tokenizer_dir:
            raise ValueError("prompt.format is 'text' but prompt.tokenizer_dir is empty: point it at the "
                             "hf_tokenizer directory written by `convert_checkpoint.py from-hf`")
        if self.template.count("{history}") != 1:
            raise ValueError(f"prompt.template must contain '{{history}}' exactly once, got {self.template!r}")
        if self.item_format.count("{item}") != 1:
            raise ValueError(f"prompt.item_format must contain '{{item}}' exactly once, got {self.item_format!r}")


@dataclass(kw_only=True)
class DataConfig:
    """Dataset selection, preprocessing and the prepared-data location."""

    dataset: Literal["synthetic", "ml-100k", "movielens", "amazon", "csv"] = "synthetic"
    """Source: embedded synthetic, MovieLens-100k (fetched), a MovieLens file, Amazon reviews, or generic CSV/TSV."""
    path: str = ""
    """Input file for movielens/amazon/csv (unused for synthetic and ml-100k)."""
    prepared_dir: str = ""
    """Directory of the prepared dataset (written by `recast-data prepare`, read by training)."""
    kcore: int = 5
    """Iterative k-core filter: every kept user and item has at least this many interactions."""
    max_history: int = 20
    """Maximum number of history items in a prompt (most recent kept)."""
    target_set_size: int = 1
    """Size of the target set: the next k items count as hits (OpenOneRec uses up to 10)."""
    skip_malformed: bool = False
    """Count and skip malformed rows instead of failing with file and line."""
    min_rating: float | None = None
    """Keep only interactions with rating >= this (None keeps all; needs a format with ratings)."""
    dedup_interactions: bool = True
    """Keep only the earliest interaction of each (user, item) pair."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Synthetic generator settings."""
    semantic_ids: SemanticIdConfig = field(default_factory=SemanticIdConfig)
    """Semantic-ID settings."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    """Prompt format: item tokens only (default) or a text template for a pretrained LLM."""

    def validate(self) -> None:
        """Range checks that the types cannot express (called by the strict loader)."""
        if self.kcore < 1:
            raise ValueError(f"kcore must be >= 1, got {self.kcore}")
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}")
        if self.target_set_size < 1:
            raise ValueError(f"target_set_size must be >= 1, got {self.target_set_size}")
        sid = self.semantic_ids
        if sid.levels < 1 or sid.codes_per_level < 2 or sid.embedding_dim < 1 or sid.kmeans_iters < 1:
            raise ValueError(
                "semantic_ids needs levels >= 1, codes_per_level >= 2, embedding_dim >= 1, kmeans_iters >= 1"
            )
        if sid.levels >= 25:
            raise ValueError(f"semantic_ids.levels must be < 25 (token letters a..y), got {sid.levels}")
