"""DRSformer compression: data, metrics, training, pruning, distillation, results."""
