"""A Hugging Face Trainer run, watched by nanogpt-monitor through one callback.

    pip install 'nanogpt-monitor[hf]'
    python examples/hf_trainer.py --metrics-port 8000 --max-steps 300          # a tiny GPT-2
    python examples/hf_trainer.py --arch llama                                  # a tiny Llama
    torchrun --nproc_per_node=2 examples/hf_trainer.py --metrics-port 8000      # ranks on 8000, 8001

The model is built from a config with tiny sizes (no hub download) and trains
on Python's language reference as bytes, on the CPU, in well under a minute.
The one line that matters is `callbacks=[MonitorCallback(...)]`.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from exporter import ServeError  # noqa: E402
from nanogpt_monitor.hf import MonitorCallback  # noqa: E402
from shared import VOCAB_SIZE, Windows, corpus, lr_factor, parse_flags  # noqa: E402


class CausalWindows(Windows):
    """Windows as the Trainer's causal LMs take them: input_ids and labels (shifted inside the model)."""

    def __getitem__(self, i):
        ids = super().__getitem__(i)[:-1]
        return {"input_ids": ids, "labels": ids}


def tiny_model(arch: str, block_size: int):
    if arch == "llama":
        config = transformers.LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=block_size, tie_word_embeddings=True,
                                          bos_token_id=0, eos_token_id=0)
        return transformers.LlamaForCausalLM(config)
    config = transformers.GPT2Config(vocab_size=VOCAB_SIZE, n_embd=64, n_layer=2, n_head=4, n_positions=block_size,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    arch = "gpt2"
    if "--arch" in argv:  # the example's own flag, besides the shared ones
        i = argv.index("--arch")
        arch, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    args = parse_flags("Hugging Face Trainer with nanogpt-monitor's MonitorCallback.", argv)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    train_data, val_data = corpus()
    model = tiny_model(arch, args.block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(args.lr_zero_after))
    training_args = transformers.TrainingArguments(
        output_dir=args.out_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, logging_steps=args.log_every, eval_strategy="steps",
        eval_steps=args.eval_every, save_steps=args.save_every, save_total_limit=1, report_to=[],
        use_cpu=True, disable_tqdm=True, max_grad_norm=1.0, dataloader_num_workers=0)
    trainer = transformers.Trainer(
        model=model, args=training_args, optimizers=(optimizer, schedule),
        train_dataset=CausalWindows(train_data, args.block_size, args.max_steps * args.batch_size),
        eval_dataset=CausalWindows(val_data, args.block_size, 2 * args.batch_size, seed=None),
        callbacks=[MonitorCallback(run_id=args.run_id, host=args.metrics_host, port=args.metrics_port,
                                   linger_seconds=args.metrics_linger, dataset="pydoc_data.topics (bytes)")])
    try:
        trainer.train()
    except ServeError as e:  # the metrics port is taken: nothing trained yet
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"run finished: iteration {trainer.state.global_step}", flush=True)
    return 0  # with --metrics-linger the callback keeps serving that long as the process exits


if __name__ == "__main__":
    raise SystemExit(main())
