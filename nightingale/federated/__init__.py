"""Federated pretraining across sites (Flower): records never leave a site; only suppressed
vocabulary sketches, model updates (masked by SecAgg+) and metrics travel. See README
"Training across sites"."""
