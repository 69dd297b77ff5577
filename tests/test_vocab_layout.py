"""The item vocabulary's layout (data/tokens.py), text prompts (data/prompts.py) and the import's vocabulary
rules (checkpoint/hf_vocab.py, checkpoint/hf_import.py), without any process group."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from recast_mcore.config.data import PromptConfig
from recast_mcore.config.rollout import SamplingConfig
from recast_mcore.config.signal import RewardConfig
from recast_mcore.config.train import EvalConfig
from recast_mcore.data.tokens import ITEM_ONLY, ItemVocab, TokenLayout
from recast_mcore.data.trie import ItemTrie

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_helpers import make_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CODES = torch.tensor([[0, 1, 0], [0, 2, 1], [1, 0, 0], [2, 2, 1], [2, 1, 0]])
LLM = TokenLayout(base_vocab_size=1000, added_specials=("<|sid_begin|>", "<|sid_end|>"), pad_id=7, bos_id=-1, eos_id=1001)


def test_item_only_layout_is_todays_vocabulary():
    vocab = ItemVocab(CODES, [3, 3, 2])
    assert vocab.layout == ITEM_ONLY and (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.sep_id) == (0, 1, 2, 3)
    assert vocab.item_tokens[1].tolist() == [4 + 0, 4 + 3 + 2, 4 + 6 + 1] and vocab.vocab_size == 4 + 8
    assert vocab.token_strings[:5] == ["<pad>", "<bos>", "<eos>", "<sep>", "<a_0>"]
    assert vocab.encode_prompt([1, 0]) == [1, 4, 9, 11, 4, 8, 10] and vocab.encode_response(3) == [6, 9, 11, 2]


def test_expanded_layout_offsets_every_item_token_in_one_place():
    vocab = ItemVocab(CODES, [3, 3, 2], LLM)
    assert vocab.item_offset == 1002 and vocab.vocab_size == 1002 + 8
    assert vocab.item_tokens[1].tolist() == [1002, 1002 + 3 + 2, 1002 + 6 + 1]
    assert vocab.encode_response(1) == [1002, 1007, 1009, 1001] and vocab.token_id(2, 1) == 1009
    assert vocab.appended_tokens[:3] == ["<|sid_begin|>", "<|sid_end|>", "<a_0>"] and vocab.item_string(1) == "<a_0><b_2><c_1>"
    assert vocab.tokens_from_string("<|sid_begin|><a_2><b_1>") == [1000, 1004, 1006]
    with pytest.raises(ValueError, match="need a text template"):
        vocab.encode_prompt([0])
    with pytest.raises(ValueError, match="its text tokens are in that tokenizer"):
        vocab.token_strings
    with pytest.raises(ValueError, match="eos_id=2000"):
        TokenLayout(base_vocab_size=10, added_specials=(), pad_id=0, bos_id=-1, eos_id=2000).validate()
    assert TokenLayout.from_state(LLM.to_state()) == LLM


def _bigram_logits_fn(vocab: ItemVocab):
    """A fixed "model" over items: next-token logits depend on the last token's (level, code) only, so the
    same model can be written in any layout. Non-item tokens give a fixed random row."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(1 + vocab.vocab_size - vocab.item_offset, vocab.vocab_size - vocab.item_offset, generator=g)

    def logits_fn(ids: torch.Tensor) -> torch.Tensor:
        rel = (ids - vocab.item_offset).clamp(min=-1) + 1  # 0: any non-item token
        out = torch.full((*ids.shape, vocab.vocab_size), -5.0)
        out[..., vocab.item_offset:] = table[rel]
        out[..., vocab.eos_id] = 0.0
        return out

    return logits_fn


def test_trie_rollout_beam_rewards_and_eval_are_layout_free():
    """The same items in the item-only and an LLM layout: identical beam rankings and scores, sampled log-probs
    equal to the exact per-item table, identical rewards and metrics (the engines, the trie and the rewards
    only see item_tokens / eos_id / vocab_size). Sampled items themselves differ: the sampler's random draws
    depend on the vocabulary width."""
    from recast_mcore.data.dataset import Example
    from recast_mcore.eval.evaluate import evaluate
    from recast_mcore.rewards import compute_rewards
    from recast_mcore.rollout.catalog import ItemCatalog
    from recast_mcore.rollout.torch_engine import TorchRolloutEngine

    fixed_items = torch.tensor([[0, 1, 3, -1], [4, 4, 2, 0], [1, 2, 3, 4]])
    results = []
    for layout in (ITEM_ONLY, LLM):
        vocab = ItemVocab(CODES, [3, 3, 2], layout, prompt_fn=lambda items: [5, 6] + items.reshape(-1).tolist())
        trie = ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id)
        responses = torch.tensor([vocab.encode_response(i) for i in range(5)])
        assert trie.item_ids(responses).tolist() == [0, 1, 2, 3, 4]
        allowed = trie.response_mask(responses)
        assert allowed[:, :, vocab.item_offset :].sum() + allowed[:, :, vocab.eos_id].sum() == allowed.sum()
        engine = TorchRolloutEngine(ItemCatalog.from_vocab(vocab), _bigram_logits_fn(vocab), seed=3)
        prompts = [vocab.encode_prompt(h) for h in ([0, 1], [4], [2, 3, 1])]
        beams = engine.beam_search(prompts, beam_width=5)  # exhaustive: 5 items
        table = torch.zeros(3, 5, 4)
        table[torch.arange(3)[:, None], beams.item_ids] = beams.token_logprobs
        groups = engine.generate(prompts, [[1], [2], [3]], SamplingConfig(group_size=6))
        torch.testing.assert_close(groups.token_logprobs, table[torch.arange(3)[:, None], groups.item_ids], atol=1e-6, rtol=0)
        rewards = compute_rewards(fixed_items, [[1], [2], [3, 0]], vocab.item_tokens, RewardConfig(name="prefix_match"))
        examples = [Example(user=u, history=h, targets=[t]) for u, (h, t) in enumerate((([0, 1], 1), ([4], 2), ([2, 3, 1], 3)))]
        metrics = evaluate(engine, vocab, examples, EvalConfig(ks=[1, 3], beam_width=5, batch_size=2))
        metrics.pop("eval_time_s")
        results.append((beams.item_ids, beams.scores, table, rewards, metrics))
    (ids_a, *floats_a, metrics_a), (ids_b, *floats_b, metrics_b) = results
    assert torch.equal(ids_a, ids_b) and metrics_a == metrics_b
    for a, b in zip(floats_a, floats_b):  # the same numbers up to float rounding of the wider softmax
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def qwen_plan(tmp_path_factory):
    from recast_mcore.checkpoint.hf_vocab import plan_vocab

    root = tmp_path_factory.mktemp("tok")
    make_tokenizer("qwen").save_pretrained(str(root))
    return plan_vocab(root, ItemVocab(CODES, [3, 3, 2]), {"vocab_size": 344})


def test_plan_vocab_appends_specials_then_items(qwen_plan):
    vocab, tok = qwen_plan.vocab, qwen_plan.tokenizer
    assert qwen_plan.kind == "expand" and qwen_plan.source_rows == 320 == vocab.layout.base_vocab_size
    assert vocab.layout.added_specials == ("<|sid_begin|>", "<|sid_end|>") and vocab.eos_id == 321
    assert vocab.pad_id == tok.convert_tokens_to_ids("<|endoftext|>") and vocab.bos_id == -1  # Qwen: no bos
    assert len(tok) == vocab.vocab_size == 322 + 8
    # item tokens never merge with text, whatever surrounds them
    ids = tok("item<a_1><b_0>items", add_special_tokens=False)["input_ids"]
    at = ids.index(323)
    assert ids[at : at + 2] == [323, 325] and tok.decode(ids[:at]) == "item" and tok.decode(ids[at + 2 :]) == "items"


@pytest.mark.parametrize("chat", ["auto", "off"])
def test_text_prompt_pieces_equal_the_tokenizer(qwen_plan, chat):
    from recast_mcore.data.prompts import TextPrompt, render_text

    cfg = PromptConfig(format="text", tokenizer_dir="x", chat_template=chat, system="You recommend items.")
    vocab, tok = qwen_plan.vocab, qwen_plan.tokenizer
    prompt = TextPrompt(tok, cfg, vocab)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        history = torch.randint(0, 5, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
        text = render_text(tok, cfg, ", ".join("<|sid_begin|>" + vocab.item_string(i) + "<|sid_end|>" for i in history))
        assert prompt(vocab.item_tokens[history]) == tok(text, add_special_tokens=False)["input_ids"]
    ids = prompt(vocab.item_tokens[[0, 4]])
    assert ids[-1] == 320 and (("<|im_start|>assistant\n<think>\n\n</think>\n\n" in tok.decode(ids)) == (chat == "auto"))


def test_text_prompt_that_glues_text_to_items_is_refused(qwen_plan):
    from recast_mcore.data.prompts import TextPrompt

    cfg = PromptConfig(format="text", tokenizer_dir="x", template="the next it{history}", item_format="em{item}", item_separator="")
    with pytest.raises(ValueError, match="merges with the item tokens"):
        TextPrompt(qwen_plan.tokenizer, cfg, qwen_plan.vocab)


def test_model_vocab_reads_the_saved_tokenizer_and_checks_the_dataset(qwen_plan, tmp_path):
    from recast_mcore.checkpoint.hf_vocab import save_tokenizer
    from recast_mcore.data.prompts import model_vocab

    save_tokenizer(qwen_plan, tmp_path / "tok")
    cfg = PromptConfig(format="text", tokenizer_dir=str(tmp_path / "tok"))
    vocab = model_vocab(ItemVocab(CODES, [3, 3, 2]), cfg)
    assert vocab.layout == qwen_plan.vocab.layout and torch.equal(vocab.item_tokens, qwen_plan.vocab.item_tokens)
    assert vocab.encode_prompt([2, 0])[-1] == 320
    assert model_vocab(ItemVocab(CODES, [3, 3, 2]), PromptConfig()).layout == ITEM_ONLY
    with pytest.raises(ValueError, match="codes_per_level"):
        model_vocab(ItemVocab(CODES, [3, 3, 3]), cfg)


def test_new_vocab_rows_follow_the_rule_on_any_split(tmp_path):
    from safetensors.torch import save_file

    from recast_mcore.checkpoint.hf_import import NOISE_BLOCK, HfCheckpoint, VocabRows, vocab_rows_shard

    emb = torch.randn(50, 8, dtype=torch.float64).to(torch.bfloat16)
    save_file({"model.embed_tokens.weight": emb}, str(tmp_path / "model.safetensors"))
    ckpt = HfCheckpoint(tmp_path)
    exact = VocabRows(source_rows=40, vocab_size=45, padded=64, noise=0.0)
    rows = vocab_rows_shard(ckpt, "model.embed_tokens.weight", exact, 0, 64)
    assert rows.dtype == torch.bfloat16 and torch.equal(rows[:40], emb[:40])  # rows 40..49 of the checkpoint are dropped
    assert torch.equal(rows[40:45], emb[:40].double().mean(0).to(torch.bfloat16).expand(5, 8)) and not rows[45:].any()
    noisy = VocabRows(source_rows=40, vocab_size=40 + 2 * NOISE_BLOCK, padded=40 + 2 * NOISE_BLOCK + 88)
    whole = vocab_rows_shard(ckpt, "model.embed_tokens.weight", noisy, 0, noisy.padded)
    parts = [vocab_rows_shard(ckpt, "model.embed_tokens.weight", noisy, lo, lo + noisy.padded // 4)
             for lo in range(0, noisy.padded, noisy.padded // 4)]
    assert torch.equal(torch.cat(parts), whole)  # TP4 shards == TP1 rows
    z = (whole[40 : noisy.vocab_size].double() - emb[:40].double().mean(0)) / emb[:40].double().std(0, unbiased=False)
    assert abs(float(z.std()) - 0.1) < 0.01


def test_hf_config_features_we_cannot_import_are_named():
    from recast_mcore.checkpoint.hf_import import model_config_from_hf

    base = {"model_type": "qwen3", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 1e6, "tie_word_embeddings": True}
    cfg = model_config_from_hf(base, max_seq_len=256, params_dtype="bf16")
    assert (cfg.qk_layernorm, cfg.kv_channels, cfg.rotary_base, cfg.tie_embeddings) == (True, 16, 1000000, True)
    llama3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    llama = model_config_from_hf({**base, "model_type": "llama", "rope_theta": None, "rope_parameters": llama3},
                                 max_seq_len=256, params_dtype="bf16")
    assert (llama.qk_layernorm, llama.rotary_base, llama.rope_scaling_factor) == (False, 500000, 32.0)
    for bad, match in (({"model_type": "qwen2"}, "model_type='qwen2'"), ({"attention_bias": True}, "attention_bias"),
                       ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn'"),
                       ({"rope_scaling": {**llama3, "high_freq_factor": 2.0}}, "high_freq_factor=4.0")):
        with pytest.raises(ValueError, match=match):
            model_config_from_hf({**base, **bad}, max_seq_len=256, params_dtype="bf16")
