"""``hydra/launcher=slots``: a sweep's jobs side by side on one machine, each in a child process
with its own GPUs (``CUDA_VISIBLE_DEVICES``) and cores (affinity and thread count), refilled from a
queue the moment a job ends. Generic: it knows Hydra jobs, not what they train."""
