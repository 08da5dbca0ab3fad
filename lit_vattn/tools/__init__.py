"""Tools for trained models: the checkpoint loader, analyses, sampling, the lm-eval adapter and data
preparation."""
