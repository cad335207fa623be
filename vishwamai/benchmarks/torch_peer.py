"""The package's train step and forward pass against transformers' `LlamaForCausalLM` in PyTorch,
eager and under `torch.compile`, on the same CPU, timed alternately in one process.

    python -m vishwamai.benchmarks.torch_peer                  # small, 8 x 256, 7 rounds
    python -m vishwamai.benchmarks.torch_peer --preset tiny --pairs 2 --no-compile --out x.json

Both sides run the same model: the preset's config written as a Hugging Face Llama config
(`ModelConfig.to_hf('llama')`: same D, L, heads, kv heads, vocab, MLP width, RoPE theta, norm
eps, tied or untied head), f32, with this package's initial weights copied into the torch
model (`vishwamai.hf.to_hf_state_dict`), so both start from the same numbers. The work timed:

- train: one step on `[B, T+1]` tokens (inputs 0..T-1, targets 1..T). vishwamai:
  `train.make_train_step` (chunked cross-entropy, AdamW behind global-norm clipping, state
  donated). torch: logits, `F.cross_entropy`, backward, `clip_grad_norm_(1.0)`, `AdamW`
  (same betas, eps, weight decay; torch's fused CPU kernel where it exists), `zero_grad`;
  under `torch.compile` the model and the loss are one compiled function (its backward
  compiled by AOTAutograd), the optimizer step is the fused kernel either way.
- forward: `tokens [B, T] -> logits [B, T, V]` in f32 (vishwamai: `jax.jit(model.logits)`;
  torch: `model(input_ids).logits` under `torch.no_grad`).

Threads: XLA:CPU runs its intra-op work on one thread per schedulable core; torch is set to
the same count (`torch.set_num_threads(cpu_threads())`, one inter-op thread), and the file
records both. Each round times vishwamai, torch.compile and torch eager once per kind, in an
order that rotates from round to round; the ratio of a round is torch's seconds over
vishwamai's (above 1: vishwamai is faster), and the file holds each ratio's median, min, max,
p10 and p90 over the rounds, beside each side's tokens/s. Compile (and torch.compile's first
calls) happens before the first round and is reported apart.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import time

import numpy as np

from vishwamai import validate
from vishwamai.config import ModelConfig, as_config

DEFAULT_OUT = os.path.join("book", "results", "torch_peer.json")
PEERS = ("torch_compile", "torch_eager")
KINDS = ("train", "forward")


def cpu_threads() -> int:
    """The intra-op threads XLA:CPU uses: one per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # platforms without affinity masks
        return os.cpu_count() or 1


def hf_llama_config(cfg) -> dict:
    """The Hugging Face `LlamaConfig` fields of the same model (`ModelConfig.to_hf('llama')`).

    Raises:
      InputError: the config is not a Llama-shaped decoder (RMSNorm, RoPE, SwiGLU MLP, no
        biases, dense MLP, no fp8, unscaled or Llama-scaled RoPE).
    """
    cfg = as_config(cfg)
    ok = (cfg.norm == "rmsnorm" and cfg.position == "rope" and cfg.mlp_activation == "swiglu"
          and not cfg.use_bias and not cfg.qkv_bias and not cfg.num_experts and not cfg.use_fp8
          and cfg.qk_norm == "none")
    if not ok:
        validate.fail("cfg", cfg.name, "a Llama-shaped config (rmsnorm, rope, swiglu, no biases, "
                      "no experts, no fp8, no qk norm), e.g. 'tiny', 'small' or 'llama2_7b'")
    d = cfg.to_hf("llama")
    d.pop("architectures", None)
    d.pop("torch_dtype", None)
    d.update(attention_dropout=0.0, use_cache=False)
    return d


def build_torch_model(cfg, params=None, *, seed: int = 0):
    """`transformers.LlamaForCausalLM` of `cfg` in f32 (SDPA attention, eval mode: no dropout),
    with `params` (this package's tree) copied in when given, else a seeded random init."""
    import torch
    import transformers
    cfg = as_config(cfg)
    hc = transformers.LlamaConfig(**hf_llama_config(cfg))
    hc._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(hc).float().eval()
    if params is not None:
        from vishwamai.hf import to_hf_state_dict
        sd = {k: torch.from_numpy(np.array(v, dtype=np.float32))
              for k, v in to_hf_state_dict(cfg, params, model_type="llama").items()}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
        if missing or unexpected:
            raise ValueError(f"weights do not match the torch model: missing {missing}, "
                             f"unexpected {unexpected}")
    return model


def _adamw(torch, params, **kw):
    try:
        return torch.optim.AdamW(params, fused=True, **kw), "fused"
    except (RuntimeError, TypeError, ValueError):  # a torch without the fused CPU kernel
        return torch.optim.AdamW(params, foreach=True, **kw), "foreach"


def torch_fns(cfg: ModelConfig, params, tokens_np, *, compiled: bool) -> dict:
    """`{'train': f, 'forward': f, 'optimizer': name}`: zero-argument callables that run one
    torch train step / forward pass on the given tokens and return when it is done."""
    import torch
    import torch.nn.functional as F
    model = build_torch_model(cfg, params)
    opt, impl = _adamw(torch, model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8,
                       weight_decay=0.1)
    x = torch.from_numpy(np.array(tokens_np, dtype=np.int64))
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    V = cfg.vocab_size

    def loss_fn(inp, tgt):
        logits = model(input_ids=inp).logits
        return F.cross_entropy(logits.reshape(-1, V).float(), tgt.reshape(-1))

    def logits_fn(inp):
        return model(input_ids=inp).logits

    if compiled:
        loss_fn, logits_fn = torch.compile(loss_fn), torch.compile(logits_fn)

    def train():
        loss = loss_fn(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def forward():
        with torch.no_grad():
            return logits_fn(inputs).shape

    return {"train": train, "forward": forward, "optimizer": impl}


def jax_fns(cfg: ModelConfig, tokens, *, seed: int = 0) -> dict:
    """The package's compiled train step and forward pass as zero-argument callables, the
    initial parameters, and each one's compile seconds."""
    import jax
    from vishwamai import train
    from vishwamai.measure import compile_time
    from vishwamai.model import VishwamAI
    opt = train.make_optimizer(warmup_steps=1, total_steps=10_000)
    step = train.make_train_step(cfg, opt)
    state = train.create_train_state(step.model, opt, jax.random.PRNGKey(seed))
    params0 = jax.tree.map(np.asarray, state.params)          # host copy: the state is donated
    step_c, step_s = compile_time(step, state, tokens)
    model = VishwamAI(cfg)
    fwd_c, fwd_s = compile_time(jax.jit(model.logits), state.params, tokens[:, :-1])
    box = {"state": state}

    def run_train():
        box["state"], metrics = step_c(box["state"], tokens)
        return float(metrics["loss"])

    def run_forward():
        return jax.block_until_ready(fwd_c(box["state"].params, tokens[:, :-1])).shape

    return {"train": run_train, "forward": run_forward, "params": params0,
            "compile_s": {"train": step_s, "forward": fwd_s}}


def ratio_summary(ours_s, theirs_s) -> dict:
    """Per-round ratios theirs / ours (above 1: ours is faster): median, min, max, p10, p90
    and the list, from two equally long lists of seconds timed in the same rounds."""
    a, b = np.asarray(ours_s, float), np.asarray(theirs_s, float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"need two equally long non-empty lists of seconds; got {a.shape}, {b.shape}")
    r = b / a
    return {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max()),
            "p10": float(np.percentile(r, 10)), "p90": float(np.percentile(r, 90)),
            "ratios": [float(x) for x in r]}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _summary(cfg, batch_size, seq_len, names, times, first, losses, sides, threads, loads,
             rounds: int, pairs: int) -> dict:
    import jax
    import torch
    import transformers
    from vishwamai.measure import env_info, spread
    ours = sides["vishwamai"]
    result = {"benchmark": "torch_peer", "model": cfg.name, "batch_size": batch_size,
              "seq_len": seq_len, "dtype": cfg.dtype, "pairs": rounds, "pairs_requested": pairs,
              "params": int(sum(np.size(x) for x in jax.tree.leaves(ours["params"]))),
              "hf_config": hf_llama_config(cfg), "sides": {}, "ratios": {},
              "threads": {"xla_cpu_intra_op": threads, "torch_intra_op": torch.get_num_threads(),
                          "torch_inter_op": torch.get_num_interop_threads()},
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "optimizer": {n: sides[n]["optimizer"] for n in names if n != "vishwamai"},
              "provenance": {"command": "python -m vishwamai.benchmarks.torch_peer",
                             "commit": _commit(), "load_start": loads[0], "load_end": loads[-1],
                             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                                 timespec="seconds"),
                             "host": platform.processor() or platform.machine()},
              "env": env_info()}
    for name in names:
        result["sides"][name] = {
            kind: {**spread(times[(name, kind)]), "first_call_s": first[(name, kind)],
                   "tokens_per_s": batch_size * seq_len / float(np.median(times[(name, kind)]))}
            for kind in KINDS}
        result["sides"][name]["losses"] = losses[name]
    result["sides"]["vishwamai"]["compile_s"] = ours["compile_s"]
    for peer in names[1:]:
        result["ratios"][peer] = {kind: ratio_summary(times[("vishwamai", kind)],
                                                      times[(peer, kind)]) for kind in KINDS}
    return result


def run(preset="small", batch_size: int = 8, seq_len: int = 256, *, pairs: int = 7,
        compile: bool = True, eager: bool = True, seed: int = 0, progress: bool = True,
        out: str | None = None) -> dict:
    """Times both sides alternately (see the module docstring); returns the result dict and,
    with `out`, writes it there after every round."""
    import jax
    import torch
    from vishwamai.benchmarks.harness import save_results
    from vishwamai.benchmarks.model import _config
    validate.positive_int("batch_size", batch_size)
    validate.positive_int("seq_len", seq_len)
    validate.positive_int("pairs", pairs)
    cfg = _config(preset)
    hf_llama_config(cfg)                          # a config torch can run, checked first
    if not (compile or eager):
        raise validate.InputError("compile=False and eager=False leave no peer to time")
    cfg.check_seq_len(seq_len)
    threads = cpu_threads()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:                          # already set in this process
        pass
    loads = [_load()]
    tokens = jax.random.randint(jax.random.PRNGKey(seed + 1), (batch_size, seq_len + 1), 0,
                                cfg.vocab_size, dtype=jax.numpy.int32)
    say = print if progress else (lambda *a, **k: None)
    ours = jax_fns(cfg, tokens, seed=seed)
    sides = {"vishwamai": ours}
    tokens_np = np.asarray(tokens)
    if compile:
        sides["torch_compile"] = torch_fns(cfg, ours["params"], tokens_np, compiled=True)
    if eager:
        sides["torch_eager"] = torch_fns(cfg, ours["params"], tokens_np, compiled=False)
    first = {}
    for name, fns in sides.items():               # compile and warm: two untimed calls each
        for kind in KINDS:
            t0 = time.perf_counter()
            fns[kind]()
            first[(name, kind)] = time.perf_counter() - t0
            fns[kind]()
            say(f"warm {name} {kind}: first call {first[(name, kind)]:.1f} s", flush=True)
    names = list(sides)
    times = {(n, k): [] for n in names for k in KINDS}
    losses = {n: [] for n in names}
    result = {}
    for r in range(pairs):
        order = names[r % len(names):] + names[:r % len(names)]
        for kind in KINDS:
            for name in order:
                t0 = time.perf_counter()
                value = sides[name][kind]()
                times[(name, kind)].append(time.perf_counter() - t0)
                if kind == "train":
                    losses[name].append(value)
        say(f"round {r + 1}/{pairs}: " + ", ".join(
            f"{n} {k} {times[(n, k)][-1]:.3f} s" for k in KINDS for n in names), flush=True)
        result = _summary(cfg, batch_size, seq_len, names, times, first, losses, sides, threads,
                          loads + [_load()], r + 1, pairs)
        if out:                                   # keep the rounds done if a later one dies
            save_results(out, result)
    return result


def format_result(res: dict) -> str:
    lines = [f"{res['model']}, {res['batch_size']} x {res['seq_len']}, {res['dtype']}, "
             f"{res['pairs']} rounds, threads {res['threads']}"]
    for name, s in res["sides"].items():
        lines.append(f"  {name:>14s}: train {s['train']['tokens_per_s']:8,.0f} tok/s, "
                     f"forward {s['forward']['tokens_per_s']:8,.0f} tok/s")
    for peer, rr in res["ratios"].items():
        for kind, r in rr.items():
            lines.append(f"  vishwamai / {peer} {kind}: x{r['median']:.2f} (median; "
                         f"min {r['min']:.2f}, max {r['max']:.2f})")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    positive = validate.cli_type(validate.positive_int, int, what="an int")
    p.add_argument("--preset", default="small", help="a Llama-shaped preset ('small', 'tiny')")
    p.add_argument("--batch", type=positive, default=8, help="batch size")
    p.add_argument("--seq", type=positive, default=256, help="sequence length")
    p.add_argument("--pairs", type=positive, default=7, help="alternating timed rounds")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    p.add_argument("--no-eager", action="store_true", help="leave eager torch out")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON file to write")
    return p


def main(args: argparse.Namespace) -> dict:
    res = run(args.preset, args.batch, args.seq, pairs=args.pairs, compile=not args.no_compile,
              eager=not args.no_eager, out=args.out or None)
    if args.out:
        print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    print(format_result(main(add_arguments(argparse.ArgumentParser(
        description=__doc__.split("\n")[0])).parse_args())))
