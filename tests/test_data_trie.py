"""ItemVocab and ItemTrie against the contract and a brute-force reference."""


import pytest
import torch

from recast_mcore.data.tokens import EOS_ID, ItemVocab
from recast_mcore.data.trie import ItemTrie


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_vocab(num_items: int, codes_per_level: list[int], seed: int = 0) -> ItemVocab:
    g = torch.Generator().manual_seed(seed)
    total = 1
    for k in codes_per_level:
        total *= k
    if num_items > total // 2:
        flat = torch.randperm(total, generator=g)[:num_items]  # distinct code tuples
    else:
        flat = torch.unique(torch.randint(0, total, (2 * num_items,), generator=g))
        flat = flat[torch.randperm(flat.shape[0], generator=g)[:num_items]]
        assert flat.shape[0] == num_items
    codes = []
    for k in reversed(codes_per_level):
        codes.append(flat % k)
        flat = flat // k
    return ItemVocab(torch.stack(codes[::-1], 1), codes_per_level)


def brute_allowed(item_tokens: torch.Tensor, prefix: list[int], vocab_size: int) -> torch.Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    item_len = item_tokens.shape[1]
    if len(prefix) == item_len:
        if any(row == prefix for row in item_tokens.tolist()):
            mask[EOS_ID] = True
        return mask
    for row in item_tokens.tolist():
        if row[: len(prefix)] == prefix:
            mask[row[len(prefix)]] = True
    return mask


@pytest.fixture(scope="module")
def vocab():
    return random_vocab(300, [8, 6, 10])


@pytest.fixture(scope="module")
def trie(vocab):
    return ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id)


def test_vocab_layout_matches_contract():
    vocab = ItemVocab(torch.tensor([[0, 1], [2, 0], [2, 1]]), [3, 2])
    assert vocab.vocab_size == 4 + 3 + 2
    assert vocab.token_strings[:4] == ["<pad>", "<bos>", "<eos>", "<sep>"]
    assert vocab.token_strings[4:] == ["<a_0>", "<a_1>", "<a_2>", "<b_0>", "<b_1>"]
    assert vocab.item_tokens.tolist() == [[4, 8], [6, 7], [6, 8]]
    assert vocab.token_id(1, 1) == 8
    assert vocab.encode_prompt([2, 0]) == [1, 6, 8, 4, 8]
    assert vocab.encode_response(1) == [6, 7, 2]
    assert vocab.item_string(2) == "<a_2><b_1>"
    assert vocab.tokens_from_string("<bos><a_2><b_1>") == [1, 6, 8]
    assert ItemVocab.from_state(vocab.to_state()).item_tokens.equal(vocab.item_tokens)


def test_vocab_rejects_bad_codes():
    with pytest.raises(ValueError, match="duplicate"):
        ItemVocab(torch.tensor([[0, 1], [0, 1]]), [2, 2])
    with pytest.raises(ValueError, match="item 1 level 0: code 5"):
        ItemVocab(torch.tensor([[0, 1], [5, 1]]), [2, 2])
    with pytest.raises(ValueError, match="outside the catalog"):
        ItemVocab(torch.tensor([[0, 1]]), [2, 2]).encode_prompt([3])
    with pytest.raises(ValueError, match="unknown token"):
        ItemVocab(torch.tensor([[0, 1]]), [2, 2]).tokens_from_string("<a_0><c_1>")


def test_every_item_decodes_and_masks_allow_it(vocab, trie):
    responses = torch.tensor([vocab.encode_response(i) for i in range(vocab.num_items)])
    assert trie.item_ids(responses).tolist() == list(range(vocab.num_items))
    mask = trie.response_mask(responses)
    assert mask.shape == (vocab.num_items, vocab.item_len + 1, vocab.vocab_size)
    assert mask.gather(2, responses.unsqueeze(-1)).all()
    assert mask[:, -1].sum(-1).eq(1).all() and mask[:, -1, EOS_ID].all()


def test_random_non_items_do_not_decode(vocab, trie):
    g = torch.Generator().manual_seed(1)
    rand = torch.randint(0, vocab.vocab_size, (5000, vocab.item_len), generator=g)
    items = {tuple(r) for r in vocab.item_tokens.tolist()}
    expected = [-1 if tuple(r) not in items else 0 for r in rand.tolist()]
    got = trie.item_ids(rand)
    assert [(-1 if x < 0 else 0) for x in got.tolist()] == expected
    assert (got == -1).sum() > 4000  # almost every random tuple is invalid


def test_next_token_mask_matches_brute_force(vocab, trie):
    g = torch.Generator().manual_seed(2)
    for t in range(vocab.item_len + 1):
        rows = vocab.item_tokens[torch.randint(0, vocab.num_items, (40,), generator=g), :t]
        got = trie.next_token_mask(rows)
        for r in range(rows.shape[0]):
            assert got[r].equal(brute_allowed(vocab.item_tokens, rows[r].tolist(), vocab.vocab_size))


def test_response_mask_matches_brute_force(vocab, trie):
    responses = torch.tensor([vocab.encode_response(i) for i in range(0, vocab.num_items, 7)])
    mask = trie.response_mask(responses)
    for r in range(responses.shape[0]):
        for t in range(responses.shape[1]):
            ref = brute_allowed(vocab.item_tokens, responses[r, :t].tolist(), vocab.vocab_size)
            assert mask[r, t].equal(ref)


def test_invalid_prefixes_raise(vocab, trie):
    g = torch.Generator().manual_seed(5)
    for t in range(1, vocab.item_len + 1):
        prefixes = {tuple(r[:t]) for r in vocab.item_tokens.tolist()}
        rand = torch.randint(0, vocab.vocab_size, (400, t), generator=g)
        valid = torch.tensor([tuple(r) in prefixes for r in rand.tolist()])
        assert trie.walk(rand)[:, -1].ge(0).equal(valid)
        bad = rand[~valid][:1]
        assert bad.shape[0] == 1
        with pytest.raises(ValueError, match="row 1 is not a valid catalog prefix"):
            trie.next_token_mask(torch.cat([vocab.item_tokens[:1, :t], bad]))
    with pytest.raises(ValueError, match="prefix length"):
        trie.next_token_mask(torch.tensor([vocab.encode_response(0)]))
    with pytest.raises(ValueError, match="not a valid catalog prefix"):
        trie.next_token_mask(torch.tensor([[EOS_ID]]))
    wrong_end = torch.tensor([vocab.item_tokens[0].tolist() + [0]])
    with pytest.raises(ValueError, match="response row 0 ends with token 0"):
        trie.response_mask(wrong_end)


def test_state_roundtrip_and_bad_state(vocab, trie):
    clone = ItemTrie.from_state(trie.to_state())
    responses = torch.tensor([vocab.encode_response(i) for i in range(50)])
    assert clone.response_mask(responses).equal(trie.response_mask(responses))
    moved = trie.to("cuda" if torch.cuda.is_available() else "cpu")
    assert moved.response_mask(responses).cpu().equal(trie.response_mask(responses))
    assert moved.item_ids(responses).cpu().tolist() == list(range(50))
    state = trie.to_state()
    state["child_ptr"] = state["child_ptr"][:-1]
    with pytest.raises(ValueError, match="child_ptr"):
        ItemTrie.from_state(state)
    with pytest.raises(ValueError, match="missing"):
        ItemTrie.from_state({"vocab_size": 3})


def test_constructor_rejects_duplicates_and_eos():
    with pytest.raises(ValueError, match="duplicate"):
        ItemTrie(torch.tensor([[4, 5], [4, 5]]), 8, EOS_ID)
    with pytest.raises(ValueError, match="eos_id"):
        ItemTrie(torch.tensor([[4, 2]]), 8, EOS_ID)


def test_100k_catalog_masks_and_ids():
    # correctness on a production-like catalog; its speed is measured by tools/bench_rollout.py, not asserted here
    vocab = random_vocab(100_000, [256, 256, 256], seed=3)
    trie = ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id)
    ids = torch.randint(0, vocab.num_items, (1024,), generator=torch.Generator().manual_seed(4))
    responses = torch.cat([vocab.item_tokens[ids], torch.full((1024, 1), EOS_ID)], 1)
    mask = trie.response_mask(responses)
    assert mask.gather(2, responses.unsqueeze(-1)).all()
    assert trie.item_ids(responses).equal(ids)
    assert mask[:, 0].sum(-1).eq(256).all()  # all 256 first-level codes are used
