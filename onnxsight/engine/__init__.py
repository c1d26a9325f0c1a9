"""The model engine: loading, layers, sessions and devices, graph augmentation, autodiff."""
