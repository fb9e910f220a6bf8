"""`microgpt finetune pairs|reward|dpo|ppo|grpo`: the alignment stages' flags and runs.

    microgpt finetune pairs  --init-from SFT --data kv/train.jsonl --out pairs.jsonl
    microgpt finetune reward --init-from SFT --data pairs.jsonl --out-dir rm
    microgpt finetune dpo    --init-from SFT --data pairs.jsonl --out-dir dpo [--beta 0.1]
    microgpt finetune ppo    --init-from SFT --data kv/train.jsonl --reward-model rm --out-dir ppo
    microgpt finetune grpo   --init-from SFT --data kv/train.jsonl --out-dir grpo   (rule reward)

Each run writes OUT_DIR/metrics.jsonl (a line per step; `microgpt plot OUT_DIR` draws its
"loss") and a checkpoint of the trained model that `finetune eval`, `chat` and `generate`
read (the reward model's adds reward_head.safetensors). The reference of DPO, PPO and GRPO is
--init-from itself unless --reference names another checkpoint (it must match the policy's
architecture). cli.py calls add_parsers() to hang these on its `finetune` subparser.
"""
import os

from ..errors import ConfigError
from ..train import checkpoint as ckpt


def add_parsers(ft_sub, leaf, int_, float_):
    def common(p, data_help):
        p.add_argument("--init-from", required=True, metavar="MODEL",
                       help="the starting policy: a fine-tuning run, checkpoint or HF directory")
        p.add_argument("--data", required=True, metavar="FILE.jsonl", help=data_help)
        p.add_argument("--seed", type=int_(0), default=0)
        p.add_argument("--lr", type=float_(0.0, low_open=True), default=1e-5)

    def out_dir(p):
        p.add_argument("--out-dir", required=True, metavar="DIR")

    p = leaf(ft_sub, "pairs", run_pairs,
             help="preference pairs for a synthetic task: the verified answer vs the policy's wrong sample")
    common(p, "chat JSONL of a synthetic task (data synth)")
    p.add_argument("--out", required=True, metavar="PAIRS.jsonl")
    p.add_argument("--samples", type=int_(1), default=4, help="samples per prompt (default 4)")
    p.add_argument("--limit", type=int_(0), default=0, help="use the first N prompts (0 = all)")
    p.add_argument("--max-new-tokens", type=int_(1), default=8)
    p.add_argument("--wrong-per-prompt", type=int_(0), default=1,
                   help="distinct wrong samples kept per prompt as rejected answers (default 1)")
    p.add_argument("--perturbed", type=int_(0), default=0,
                   help="near misses of the verified answer (one character changed) per prompt "
                        "as further rejected answers (default 0)")

    p = leaf(ft_sub, "reward", run_reward, help="train a reward model on preference pairs (Bradley-Terry)")
    common(p, "preference pairs JSONL {prompt, chosen, rejected}")
    out_dir(p)
    p.add_argument("--val-share", type=float_(0.0, 1.0, high_open=True), default=0.1,
                   help="held-out share of the pairs for pair accuracy (default 0.1)")
    p.add_argument("--val-data", metavar="PAIRS.jsonl",
                   help="held-out pairs from a file instead (e.g. pairs of the held-out prompts, so "
                        "no prompt is on both sides); all of --data then trains")
    p.add_argument("--epochs", type=int_(1), default=1)
    p.add_argument("--batch-size", type=int_(1), default=16)
    p.add_argument("--max-steps", type=int_(0), default=0)

    p = leaf(ft_sub, "dpo", run_dpo, help="direct preference optimization against a frozen reference")
    common(p, "preference pairs JSONL {prompt, chosen, rejected}")
    out_dir(p)
    p.add_argument("--reference", help="the frozen reference (default: --init-from)")
    p.add_argument("--beta", type=float_(0.0, low_open=True), default=0.1)
    p.add_argument("--epochs", type=int_(1), default=1)
    p.add_argument("--batch-size", type=int_(1), default=8)
    p.add_argument("--max-steps", type=int_(0), default=0)
    p.add_argument("--lora-rank", type=int_(0), default=0, help="0 = full fine-tuning (default)")

    for name, helptext in (("ppo", "PPO with a KL penalty; the reward from a reward model or the rule"),
                           ("grpo", "GRPO: group-normalized advantages, k3 KL, no value head")):
        p = leaf(ft_sub, name, run_ppo if name == "ppo" else run_grpo, help=helptext)
        common(p, "chat JSONL whose prompts are rolled out (the answers are not used)")
        out_dir(p)
        p.add_argument("--reference", help="the frozen reference (default: --init-from)")
        p.add_argument("--iterations", type=int_(1), default=20)
        p.add_argument("--prompts", type=int_(1), default=16 if name == "ppo" else 8,
                       help="prompts per iteration")
        p.add_argument("--epochs", type=int_(1), default=2 if name == "ppo" else 1)
        p.add_argument("--minibatch", type=int_(1), default=8 if name == "ppo" else 32)
        p.add_argument("--clip", type=float_(0.0, low_open=True), default=0.2)
        p.add_argument("--max-new-tokens", type=int_(1), default=8)
        if name == "ppo":
            p.add_argument("--reward-model", help="a `finetune reward` run (else --reward rule)")
            p.add_argument("--reward", choices=("model", "rule"), default=None,
                           help="model (needs --reward-model) or rule (the synthetic task's verifier)")
            p.add_argument("--kl-coef", type=float_(0.0), default=0.05)
            p.add_argument("--kl-target", type=float_(0.0), default=0.0, help="0 = fixed kl-coef")
            p.add_argument("--vf-coef", type=float_(0.0), default=0.1)
            p.add_argument("--ent-coef", type=float_(0.0), default=0.0)
            p.add_argument("--gamma", type=float_(0.0, 1.0), default=1.0)
            p.add_argument("--lam", type=float_(0.0, 1.0), default=0.95)
        else:
            p.add_argument("--group", type=int_(2), default=8, help="samples per prompt")
            p.add_argument("--beta", type=float_(0.0), default=0.04, help="k3 KL weight")
            p.add_argument("--temperature", type=float_(0.0, low_open=True), default=1.0)


def _fresh(out_dir):
    from ..train.trainer import _check_fresh_run_dir
    _check_fresh_run_dir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(ckpt.metrics_path(out_dir)):
        os.remove(ckpt.metrics_path(out_dir))


def _policy(path):
    from .sft import load_chat_model
    model, tokenizer, generation = load_chat_model(path)
    return model, tokenizer, generation


def _reference(args, policy):
    from .rl_common import check_same_architecture
    reference = _policy(args.reference or args.init_from)[0]
    check_same_architecture(policy, reference)
    return reference.eval()


def save_policy(out_dir, model, tokenizer, generation, step):
    from . import lora as lora_lib
    weights = lora_lib.base_state(model) if lora_lib.lora_layers(model) else model.state_dict()
    return ckpt.save(out_dir, ckpt.Checkpoint(step, model.config.to_dict(), weights, tokenizer,
                                              {k: v for k, v in generation.items()
                                               if k in ("temperature", "top_k", "max_new_tokens")}),
                     keep=1)


def run_pairs(args):
    from .preference import make_pairs, read_prompts, write_pairs
    model, tokenizer, _ = _policy(args.init_from)
    prompts = read_prompts(args.data)
    if args.limit:
        prompts = prompts[:args.limit]
    rows = make_pairs(model, tokenizer, prompts, args.samples, args.max_new_tokens, args.seed,
                      wrong_per_prompt=args.wrong_per_prompt, perturbed=args.perturbed)
    write_pairs(args.out, rows)
    print(f"{len(rows)} pairs from {len(prompts)} prompts (up to {args.wrong_per_prompt} wrong of "
          f"{args.samples} samples and {args.perturbed} near misses each) -> {args.out}")
    return 0


def run_reward(args):
    from .preference import encode_pairs, read_pairs, split_rows
    from .reward import RewardModel, RewardOptions, save_reward_model, train_reward_model
    from .rl_common import AlignmentError
    _fresh(args.out_dir)
    gpt, tokenizer, _ = _policy(args.init_from)
    if args.val_data:
        train_rows, val_rows = read_pairs(args.data), read_pairs(args.val_data)
    else:
        train_rows, val_rows = split_rows(read_pairs(args.data), args.val_share, args.seed)
    train, report = encode_pairs(tokenizer, train_rows, gpt.config.block_size)
    val, _ = encode_pairs(tokenizer, val_rows, gpt.config.block_size)
    print(f"pairs: {report.summary()}; {len(val)} held out")
    if not train:
        raise AlignmentError(f"{args.data}: no preference pair left to train on ({report.summary()})")
    model = RewardModel(gpt, args.seed)
    summary = train_reward_model(model, train, val, RewardOptions(args.epochs, args.batch_size, args.lr,
                                                                  0.0, args.seed, args.max_steps),
                                 args.out_dir)
    path = save_reward_model(args.out_dir, model, tokenizer, summary["steps"])
    print(f"held-out pair accuracy {summary['val_accuracy']:.3f}; reward model: {path}")
    return 0


def run_dpo(args):
    from .dpo import DPOOptions, train_dpo
    from .preference import load_pairs
    _fresh(args.out_dir)
    policy, tokenizer, generation = _policy(args.init_from)
    reference = _reference(args, policy)
    pairs, report = load_pairs(args.data, tokenizer, policy.config.block_size)
    print(f"pairs: {report.summary()}")
    options = DPOOptions(beta=args.beta, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                         max_steps=args.max_steps, lora_rank=args.lora_rank, seed=args.seed)
    summary = train_dpo(policy, reference, pairs, options, args.out_dir)
    path = save_policy(args.out_dir, policy, tokenizer, generation, summary["steps"])
    print(f"checkpoint: {path}\nnext: microgpt finetune eval {args.out_dir} --data HELD_OUT.jsonl")
    return 0


def model_reward(reward_model):
    def reward(prompts, seqs, texts):
        return reward_model.score(seqs)
    return reward


def rule_reward_fn(prompts, seqs, texts):
    from .preference import rule_reward
    return [rule_reward(p, t) for p, t in zip(prompts, texts)]


def run_ppo(args):
    from .ppo import PolicyWithValue, PPOOptions, train_ppo
    from .preference import read_prompts
    from .reward import load_reward_model
    from .rl_common import check_same_tokenizer
    kind = args.reward or ("model" if args.reward_model else None)
    if kind is None or (kind == "model" and not args.reward_model):
        raise ConfigError("give --reward-model RM_RUN (a `finetune reward` run) or --reward rule")
    _fresh(args.out_dir)
    gpt, tokenizer, generation = _policy(args.init_from)
    reference = _reference(args, gpt)
    if kind == "model":
        rm, rm_tokenizer = load_reward_model(args.reward_model)
        check_same_tokenizer(tokenizer, rm_tokenizer)
        reward_fn = model_reward(rm)
    else:
        reward_fn = rule_reward_fn
    prompts = [p for p, _ in read_prompts(args.data)]
    options = PPOOptions(iterations=args.iterations, prompts_per_iteration=min(args.prompts, len(prompts)),
                         epochs=args.epochs, minibatch=args.minibatch, lr=args.lr, clip=args.clip,
                         vf_coef=args.vf_coef, ent_coef=args.ent_coef, gamma=args.gamma, lam=args.lam,
                         kl_coef=args.kl_coef, kl_target=args.kl_target,
                         max_new_tokens=args.max_new_tokens, seed=args.seed)
    policy = PolicyWithValue(gpt, args.seed)
    summary = train_ppo(policy, reference, tokenizer, prompts, reward_fn, options, args.out_dir)
    path = save_policy(args.out_dir, gpt, tokenizer, generation, summary["iterations"])
    print(f"{summary['iterations']} iterations in {summary['seconds']:.0f} s; checkpoint: {path}")
    return 0


def run_grpo(args):
    from .grpo import GRPOOptions, train_grpo
    from .preference import read_prompts
    _fresh(args.out_dir)
    gpt, tokenizer, generation = _policy(args.init_from)
    reference = _reference(args, gpt)
    prompts = [p for p, _ in read_prompts(args.data)]
    options = GRPOOptions(iterations=args.iterations, prompts_per_iteration=min(args.prompts, len(prompts)),
                          group=args.group, epochs=args.epochs, minibatch=args.minibatch, lr=args.lr,
                          clip=args.clip, beta=args.beta, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, seed=args.seed)
    summary = train_grpo(gpt, reference, tokenizer, prompts, rule_reward_fn, options, args.out_dir)
    path = save_policy(args.out_dir, gpt, tokenizer, generation, summary["iterations"])
    print(f"{summary['iterations']} iterations in {summary['seconds']:.0f} s; checkpoint: {path}")
    return 0
