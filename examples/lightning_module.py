"""A LightningModule that logs nothing but its val_loss, watched by nanogpt-monitor through one callback.

    pip install 'nanogpt-monitor[lightning]'
    python examples/lightning_module.py --metrics-port 8000 --max-steps 300
    torchrun --nproc_per_node=2 examples/lightning_module.py --metrics-port 8000   # ranks on 8000, 8001

Trains a tiny byte-level transformer on Python's language reference on the CPU
(well under a minute). Loss, learning rate, grad norm, tokens/s and ETA come
from the callback alone; the one line that matters is
`callbacks=[MonitorCallback(...)]`.
"""

from __future__ import annotations

import os
import sys

import lightning.pytorch as L
import torch

from exporter import ServeError
from nanogpt_monitor.lightning import MonitorCallback
from shared import TinyLM, Windows, corpus, lr_factor, parse_flags


class ByteLM(L.LightningModule):
    def __init__(self, block_size: int, lr: float, lr_zero_after: int):
        super().__init__()
        self.model, self.lr, self.lr_zero_after = TinyLM(block_size), lr, lr_zero_after

    def training_step(self, batch, batch_idx):
        return self.model.loss(batch)  # nothing logged: the callback still sees it

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.model.loss(batch))  # becomes the eval loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(self.lr_zero_after))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def main(argv=None) -> int:
    args = parse_flags("Lightning with nanogpt-monitor's MonitorCallback.", argv)
    torch.manual_seed(0)
    train_data, val_data = corpus()
    train = torch.utils.data.DataLoader(Windows(train_data, args.block_size, args.max_steps * args.batch_size),
                                        batch_size=args.batch_size)
    val = torch.utils.data.DataLoader(Windows(val_data, args.block_size, 2 * args.batch_size, seed=None),
                                      batch_size=args.batch_size)
    trainer = L.Trainer(
        max_steps=args.max_steps, accelerator="cpu", logger=False,
        enable_progress_bar=False,
        devices=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),  # under torchrun: one process per rank
        enable_model_summary=False, log_every_n_steps=args.log_every, val_check_interval=args.eval_every,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, gradient_clip_val=1.0, default_root_dir=args.out_dir,
        callbacks=[MonitorCallback(run_id=args.run_id, host=args.metrics_host, port=args.metrics_port,
                                   linger_seconds=args.metrics_linger, dataset="pydoc_data.topics (bytes)"),
                   L.callbacks.ModelCheckpoint(dirpath=args.out_dir, every_n_train_steps=args.save_every)])
    try:
        trainer.fit(ByteLM(args.block_size, args.lr, args.lr_zero_after), train, val)
    except ServeError as e:  # the metrics port is taken: nothing trained yet
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"run finished: iteration {trainer.global_step}", flush=True)
    return 0  # with --metrics-linger the callback keeps serving that long as the process exits


if __name__ == "__main__":
    raise SystemExit(main())
