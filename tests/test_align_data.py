"""`microgpt finetune reward --val-data PAIRS.jsonl`: the held-out pairs come from their own file
(pairs of held-out prompts), and every pair of --data trains."""
import json

from microgpt import GPT, GPTConfig
from microgpt.cli import main
from microgpt.finetune.align_commands import save_policy
from microgpt.tokenizer import Tokenizer
from microgpt.tokenizer.chat import with_chat_tokens


def pair(prompt, chosen, rejected):
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected})


def test_reward_val_data_holds_out_a_file(tmp_path, capsys):
    tok = with_chat_tokens(Tokenizer.bytes_level())[0]
    gpt = GPT(GPTConfig(family="llama", vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2,
                        n_embd=16), seed=0)
    save_policy(str(tmp_path / "sft"), gpt, tok, {}, 0)
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(pair(f"a={k}, b=2. What is a?", str(k), str(k + 1)) for k in range(6)) + "\n")
    val = tmp_path / "val.jsonl"
    val.write_text("\n".join(pair(f"c={k}, d=5. What is c?", str(k), str(k + 2)) for k in range(3)) + "\n")
    assert main(["finetune", "reward", "--init-from", str(tmp_path / "sft"), "--data", str(train),
                 "--val-data", str(val), "--out-dir", str(tmp_path / "rm"), "--lr", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert "6 pairs from 6 lines; 3 held out" in out and "(3 pairs)" in out
