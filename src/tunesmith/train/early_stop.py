"""The best held-out loss so far, and when to stop for lack of improvement (train.early_stopping_*)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class EvalHistory:
    patience: int  # evaluations without improvement that stop the run; 0: never stop
    min_delta: float  # an improvement smaller than this does not count
    best_loss: float | None = None
    best_step: int | None = None
    without_improvement: int = 0

    def update(self, step: int, loss: float) -> bool:
        """Record an evaluation; True when it is the new best."""
        if self.best_loss is None or loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_step, self.without_improvement = loss, step, 0
            return True
        self.without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.without_improvement >= self.patience

    def state(self) -> dict:
        return {"best_loss": self.best_loss, "best_step": self.best_step,
                "without_improvement": self.without_improvement}

    def restore(self, state: dict) -> None:
        self.best_loss, self.best_step = state["best_loss"], state["best_step"]
        self.without_improvement = state["without_improvement"]

    def as_dict(self) -> dict:
        return asdict(self)
