"""A scikit-learn Gaussian-process kernel that looks at some columns of its input only, so that one regression can
hold terms over the budget, over the config's identity and over its features, each fitted by the marginal
likelihood with the rest."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel


class OnColumns(Kernel):
    """`kernel` applied to `columns` of X (and Y); its hyperparameters are the wrapped kernel's."""

    def __init__(self, kernel: Kernel, columns: Sequence[int]) -> None:
        self.kernel, self.columns = kernel, columns

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params: dict[str, Any] = {"kernel": self.kernel, "columns": self.columns}
        if deep:
            params.update({f"kernel__{name}": value for name, value in self.kernel.get_params().items()})
        return params

    @property
    def hyperparameters(self) -> list[Hyperparameter]:
        return [Hyperparameter(f"kernel__{h.name}", h.value_type, h.bounds, h.n_elements, h.fixed)
                for h in self.kernel.hyperparameters]

    @property
    def theta(self) -> np.ndarray:
        return self.kernel.theta

    @theta.setter
    def theta(self, theta: np.ndarray) -> None:
        self.kernel.theta = theta

    @property
    def bounds(self) -> np.ndarray:
        return self.kernel.bounds

    def __call__(self, X: np.ndarray, Y: Optional[np.ndarray] = None, eval_gradient: bool = False) -> Any:
        columns = list(self.columns)
        return self.kernel(np.asarray(X)[:, columns], None if Y is None else np.asarray(Y)[:, columns],
                           eval_gradient=eval_gradient)

    def diag(self, X: np.ndarray) -> np.ndarray:
        return self.kernel.diag(np.asarray(X)[:, list(self.columns)])

    def is_stationary(self) -> bool:
        return self.kernel.is_stationary()

    def __repr__(self) -> str:
        return f"{self.kernel!r} on columns {list(self.columns)}"
