"""The satisfaction model: training, checkpoints and prediction. Pure of Prefect."""
