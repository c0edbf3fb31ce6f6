"""The training stage: `cnnc train` (training/cli.py) and the checkpoints other stages read.

    from cnnc.training.checkpoint import load_checkpoint
    checkpoint = load_checkpoint("runs/xo-20260101-120000")   # the run's final model (last.pt)

Modules, in the order a run uses them:
    cli          the argparse command (imports no torch)
    run          a run from arguments to a complete run directory (its layout is documented there)
    settings     the spec's train section with command-line overrides
    data         splits in memory as tensors, batch order, batch preparation
    augment      batched, seeded augmentation
    optim        optimizers (with TensorFlow's RMSProp) and learning-rate schedules
    losses       cross-entropy on logits or probabilities
    trainer      the loop: exact resume, Ctrl-C, non-finite losses, early stopping
    distributed  torchrun support
    reporting    progress bar, epoch lines, JSON events, metrics.jsonl, plots
    plotter      the plots drawn by a helper process, alongside the run
    checkpoint   the checkpoint format
"""
