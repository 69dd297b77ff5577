"""Data foundation: readers, splits, semantic IDs, item tokens (ItemVocab) and the item trie (ItemTrie).

See docs/data.md; the cross-part contract is docs/contracts.md.
"""

from recast_mcore.data.dataset import Example, PreparedDataset
from recast_mcore.data.tokens import ItemVocab
from recast_mcore.data.trie import ItemTrie

__all__ = ["Example", "ItemTrie", "ItemVocab", "PreparedDataset"]
