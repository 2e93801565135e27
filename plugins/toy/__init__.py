"""The toy world: tones and blobs in 8 classes, tiny generators and binder trained on them, and
an oracle that judges alignment without the binder. Weights ship beside this file; see train.py."""
