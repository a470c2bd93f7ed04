"""The learning-rate schedule of every processor (docs/method.md §3.4, §4), and when the progress bar reads the loss."""


def step_lr(base_lr, steps, epoch, warm_up_epoch=0):
    """Step schedule: base_lr times 0.1 for every milestone already passed (docs/method.md §3.4, §4), after an
    optional linear warm-up of base_lr * (epoch + 1) / warm_up_epoch, as the release's fine-tuning."""
    if epoch < warm_up_epoch:
        return base_lr * (epoch + 1) / warm_up_epoch
    return base_lr * 0.1 ** sum(epoch >= s for s in steps)


PROGRESS_SECONDS = 1.0  # least time between the progress bar's loss reads (each read waits for the device)


def progress_due(step, steps, seconds_since_shown):
    """Whether the progress bar reads the loss at `step` (0-based) of `steps` (None when unknown): the first
    and the last step, and any step PROGRESS_SECONDS after the last read, so a short epoch ends showing
    its last loss and a long one reads the device about once a second, not every step."""
    return step == 0 or step + 1 == steps or seconds_since_shown >= PROGRESS_SECONDS
