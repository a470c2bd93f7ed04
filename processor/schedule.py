"""The learning-rate schedule of every processor (docs/method.md §3.4, §4)."""


def step_lr(base_lr, steps, epoch, warm_up_epoch=0):
    """Step schedule: base_lr times 0.1 for every milestone already passed (docs/method.md §3.4, §4), after an
    optional linear warm-up of base_lr * (epoch + 1) / warm_up_epoch, as the release's fine-tuning."""
    if epoch < warm_up_epoch:
        return base_lr * (epoch + 1) / warm_up_epoch
    return base_lr * 0.1 ** sum(epoch >= s for s in steps)
