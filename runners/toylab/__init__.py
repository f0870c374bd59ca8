"""The lab that trains the offline suite's tiny model (``models/tiny_llava_onevision``) on the train split of the
synthetic benchmarks of ``runners.toybench``, and probes what it learned.

    python -m runners.toylab.train [--device cuda] ...       # one training run
    python -m runners.toylab.replay models/tiny_llava_onevision/training.json [--run]   # the committed model's runs
    python -m runners.toylab.probe_needles [--model FOLDER]  # where the model reads a needle from
    python -m runners.toylab.probe_shapes                    # whether a fresh vision tower tells shapes apart

``model`` (configuration, grids, initial weights), ``wiring`` (the option lookup written into the weights),
``masks`` (where frames change and where shapes are), ``data`` (splits, clips, batches, the order of steps),
``augmentations`` (dropped tokens, hidden and decoy needles), ``losses`` (answer and locality), ``train`` (the
loop, checkpoints, command line).
"""
