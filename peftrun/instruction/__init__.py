"""Multi-task training and instruction tuning: FLAN names and leakage (flan.py), mixing rates and the
mixture sampler (mixing.py), one head per task (multitask_head.py), prompt transfer (transfer.py)."""
