"""``task: self_supervised``: an encoder learns features from unlabelled images (DINO or
BYOL, with its moving average or a frozen encoder as the teacher), judged by k-NN and
linear probes on the test split."""
