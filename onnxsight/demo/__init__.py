"""The demo: train the seed models on bundled data, convert, and look inside."""
