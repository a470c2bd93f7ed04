"""A NaN or infinite loss or score stops the run before it is written: the last checkpoint stays the last
good state (docs/errors.md)."""
import torch

from torchlight.dist import all_gather_object


class NonFiniteError(ValueError):
    """A loss or score is NaN or infinite: the run stops instead of writing it."""


def check_finite(outputs, dataset):
    """Encoder outputs (features or scores) of `dataset` must be finite: NaN scores make no result."""
    bad = (~torch.isfinite(outputs.reshape(len(outputs), -1))).any(1)
    if bad.any():
        where = getattr(dataset, "data_path", type(dataset).__name__)
        raise NonFiniteError(f"the encoder's outputs for {int(bad.sum())} of {len(bad)} clips of {where} hold NaN "
                             "or inf; no result written")


class LossCheck:
    """The first non-finite loss of an epoch, noted on the device (reading a loss every step would wait for
    the GPU) and read once at the epoch's end, before evaluation and before any checkpoint is written."""

    def __init__(self, device):
        """No non-finite loss seen yet: step 0 (steps count from 1) and its loss, on the device."""
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.loss = torch.zeros((), device=device)

    def note(self, loss, step):
        """Keep `loss` (a detached scalar) and its `step` if it is the epoch's first non-finite one."""
        first = ~torch.isfinite(loss) & (self.step == 0)
        self.step = torch.where(first, step, self.step)
        self.loss = torch.where(first, loss, self.loss)

    def check(self, epoch, last_checkpoint):
        """Stop at the first non-finite loss of `epoch` (0-based), naming it, its epoch and step.

        Every rank reads every rank's flag, so all stop at the same epoch: a rank going on alone would wait
        in its next collective for one that left.
        """
        flags = all_gather_object((int(self.step), float(self.loss)))
        bad = [(rank, step, loss) for rank, (step, loss) in enumerate(flags) if step]
        if bad:
            rank, step, loss = bad[0]
            where = f" on rank {rank}" if len(flags) > 1 else ""
            raise NonFiniteError(f"loss {loss} at epoch {epoch + 1}, step {step}{where}: "
                                 f"training stopped; last checkpoint {last_checkpoint}")
