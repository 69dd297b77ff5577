"""One-off: run verl 0.9.1's own compute_policy_loss_vanilla / agg_loss / kl_penalty source (extracted by AST,
executed with masked_mean from verl.utils.torch_functional) against recast_mcore's ppo_clip. Not a project file."""
import ast, sys, torch, types
src = open("/tmp/verl_try/verl/trainer/ppo/core_algos.py").read()
tree = ast.parse(src)
want = {"compute_policy_loss_vanilla", "agg_loss", "kl_penalty", "kl_penalty_forward"}
fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in want]
for f in fns: f.decorator_list = []
def masked_mean(values, mask, axis=None):
    s = (values * mask).sum(axis) if axis is not None else (values * mask).sum()
    return s / (mask.sum(axis) if axis is not None else mask.sum())
class Cfg(dict):
    def __getattr__(self, k): return self[k]
ns = {"torch": torch, "Optional": __import__("typing").Optional, "Any": __import__("typing").Any,
      "verl_F": types.SimpleNamespace(masked_mean=masked_mean, masked_sum=lambda v, m, axis=None: (v * m).sum() if axis is None else (v * m).sum(axis)), "ActorConfig": Cfg, "AlgoConfig": type("AlgoConfig", (), {}),
      "DictConfig": dict, "np": __import__("numpy")}
exec(compile(ast.Module(body=fns, type_ignores=[]), "core_algos", "exec"), ns)
sys.path.insert(0, "/work/wt/i9"); sys.path.insert(0, "/work/wt/i9/tests")
from recast_mcore.config.signal import KlConfig
from recast_mcore.signal import compute_policy_loss
from signal_helpers import make_batch
gen = torch.Generator().manual_seed(0)
n, t = 64, 5
old = -torch.rand(n, t, generator=gen) * 3
lp = old + 1.5 * torch.randn(n, t, generator=gen)
ref = old + 0.7 * torch.randn(n, t, generator=gen)
adv = torch.randn(n, generator=gen) * 2
mask = (torch.rand(n, t, generator=gen) > 0.2)
cfg = Cfg(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, global_batch_info={})
cfg["get"] = lambda k, d=None: cfg[k] if k in cfg else d
pg_loss, metrics = ns["compute_policy_loss_vanilla"](old_log_prob=old, log_prob=lp, advantages=adv[:, None].expand(n, t),
    response_mask=mask.float(), loss_agg_mode="token-mean", config=cfg)
kld = ns["kl_penalty"](lp, ref, "low_var_kl")
kl_loss = ns["agg_loss"](loss_mat=kld, loss_mask=mask.float(), loss_agg_mode="token-mean")
batch = make_batch(old, group_index=sorted(i // 4 for i in range(n)), advantages=adv.tolist(), ref_logprobs=ref)
batch.token_mask = mask
s, d, m = compute_policy_loss(lp, batch)
batch.kl = KlConfig(use_kl=True, coef=0.001)
s_kl, d_kl, m_kl = compute_policy_loss(lp, batch)
print("verl pg_loss", float(pg_loss), "ours", float(s / d), "abs diff", abs(float(pg_loss) - float(s / d)))
print("verl metrics", {k: float(v) for k, v in metrics.items()})
print("ours clipfrac", float(m["clipfrac_sum"] / d), "ppo_kl", float(m["approx_kl_old_sum"] / d), "lower", float(m["clipfrac_lower_sum"] / d))
print("verl pg + 0.001 kl", float(pg_loss + 0.001 * kl_loss), "ours", float(s_kl / d_kl), "diff", abs(float(pg_loss + 0.001 * kl_loss) - float(s_kl / d_kl)))
