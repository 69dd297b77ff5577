"""Run verl's OWN policy-loss code against recast_mcore's ``ppo_clip`` on the same random inputs.

verl's package imports ray, tensordict, transformers, ...; this tool imports none of it: it reads verl's
``trainer/ppo/core_algos.py``, extracts the functions ``compute_policy_loss_vanilla``, ``agg_loss`` and
``kl_penalty`` / ``kl_penalty_forward`` by AST and executes them with torch plus two small helpers
(``masked_mean``/``masked_sum`` as in ``verl.utils.torch_functional``). Not a test dependency::

    pip download --no-deps verl==0.9.1 -d /tmp/verl && cd /tmp/verl && unzip -q verl-0.9.1-*.whl
    .venv/bin/python tools/check_ppo_clip_vs_verl.py /tmp/verl/verl/trainer/ppo/core_algos.py

Prints verl's and our pg loss, clip fractions, approx KL to old, and pg + 0.001 * low_var_kl (token-mean).
"""

from __future__ import annotations

import argparse
import ast
import sys
import types
import typing
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WANTED = {"compute_policy_loss_vanilla", "agg_loss", "kl_penalty", "kl_penalty_forward"}


class _Cfg(dict):
    """The attribute/`get` access verl's loss reads from its ActorConfig."""

    def __getattr__(self, key):
        return self[key]


def load_verl_functions(core_algos: Path) -> dict:
    tree = ast.parse(core_algos.read_text())
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in WANTED]
    for fn in fns:
        fn.decorator_list = []

    def masked_mean(values, mask, axis=None):
        return (values * mask).sum(axis) / mask.sum(axis) if axis is not None else (values * mask).sum() / mask.sum()

    def masked_sum(values, mask, axis=None):
        return (values * mask).sum(axis) if axis is not None else (values * mask).sum()

    ns = {"torch": torch, "Optional": typing.Optional, "Any": typing.Any, "np": __import__("numpy"),
          "verl_F": types.SimpleNamespace(masked_mean=masked_mean, masked_sum=masked_sum),
          "ActorConfig": _Cfg, "AlgoConfig": type("AlgoConfig", (), {}), "DictConfig": dict}
    exec(compile(ast.Module(body=fns, type_ignores=[]), str(core_algos), "exec"), ns)
    return ns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("core_algos", type=Path, help="verl/trainer/ppo/core_algos.py of an unpacked verl wheel")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from recast_mcore.config.signal import KlConfig
    from recast_mcore.signal import compute_policy_loss
    from signal_helpers import make_batch

    verl = load_verl_functions(args.core_algos)
    gen = torch.Generator().manual_seed(0)
    n, t = 64, 5
    old = -torch.rand(n, t, generator=gen) * 3
    lp = old + 1.5 * torch.randn(n, t, generator=gen)
    ref = old + 0.7 * torch.randn(n, t, generator=gen)
    adv = torch.randn(n, generator=gen) * 2
    mask = torch.rand(n, t, generator=gen) > 0.2
    cfg = _Cfg(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, global_batch_info={})
    cfg["get"] = lambda key, default=None: cfg[key] if key in cfg else default
    pg_loss, metrics = verl["compute_policy_loss_vanilla"](
        old_log_prob=old, log_prob=lp, advantages=adv[:, None].expand(n, t), response_mask=mask.float(),
        loss_agg_mode="token-mean", config=cfg)
    kl_loss = verl["agg_loss"](loss_mat=verl["kl_penalty"](lp, ref, "low_var_kl"), loss_mask=mask.float(), loss_agg_mode="token-mean")
    batch = make_batch(old, group_index=sorted(i // 4 for i in range(n)), advantages=adv.tolist(), ref_logprobs=ref)
    batch.token_mask = mask
    s, d, m = compute_policy_loss(lp, batch)
    batch.kl = KlConfig(use_kl=True, coef=0.001)
    s_kl, d_kl, _ = compute_policy_loss(lp, batch)
    print(f"pg loss        verl {float(pg_loss):.9f}  ours {float(s / d):.9f}  |diff| {abs(float(pg_loss) - float(s / d)):.3g}")
    print("verl metrics  ", {k: round(float(v), 9) for k, v in metrics.items()})
    print(f"ours metrics   clipfrac {float(m['clipfrac_sum'] / d):.9f}  ppo_kl {float(m['approx_kl_old_sum'] / d):.9f}"
          f"  clipfrac_lower {float(m['clipfrac_lower_sum'] / d):.9f}")
    both = float(pg_loss + 0.001 * kl_loss)
    print(f"pg + kl        verl {both:.9f}  ours {float(s_kl / d_kl):.9f}  |diff| {abs(both - float(s_kl / d_kl)):.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
