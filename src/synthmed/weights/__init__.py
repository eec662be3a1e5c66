"""Weights of the methods' official implementations, converted into synthmed's networks.

One module per origin: :mod:`synthmed.weights.junyanz` (the official PyTorch pix2pix and CycleGAN). Each turns the
origin's state dict into the state dict of one of our networks, refusing anything it does not recognise
(:mod:`synthmed.weights.state`); :mod:`synthmed.workflows.import_weights` makes a run folder of the result.
"""
