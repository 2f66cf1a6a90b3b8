"""SPEC.md's metric table, as data the tests check the exporter against."""

# exposed sample name -> (type, extra label that must be present or None)
SPEC_METRICS = {
    "nanogpt_iteration": ("gauge", None),
    "nanogpt_max_iterations": ("gauge", None),
    "nanogpt_iterations_total": ("counter", None),
    "nanogpt_tokens_total": ("counter", None),
    "nanogpt_train_loss": ("gauge", None),
    "nanogpt_train_loss_ema": ("gauge", None),
    "nanogpt_logged_loss_sum": ("summary", None),
    "nanogpt_logged_loss_count": ("summary", None),
    "nanogpt_eval_loss": ("gauge", "split"),
    "nanogpt_learning_rate": ("gauge", None),
    "nanogpt_grad_norm": ("gauge", None),
    "nanogpt_iteration_duration_seconds_bucket": ("histogram", "le"),
    "nanogpt_mfu_ratio": ("gauge", None),
    "nanogpt_loss_nonfinite_total": ("counter", None),
    "nanogpt_last_iteration_timestamp_seconds": ("gauge", None),
    "nanogpt_training_start_time_seconds": ("gauge", None),
    "nanogpt_training_state": ("gauge", "state"),
    "nanogpt_model_parameters": ("gauge", "component"),
    "nanogpt_model_config": ("gauge", "field"),
    "nanogpt_run_info": ("info", "dataset"),
}
