"""Datasets: the bundled digits, a user's MNIST .npz, CIFAR-10 batches, image folders."""
