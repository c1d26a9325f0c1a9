"""Dataset-scale jobs: stream a dataset in shards through an attribution method on a local
process pool or a Ray cluster, write sharded results with a manifest, and merge per-shard
partial reductions (class mean/SEM, top-K per unit, unit statistics) in a tree."""
