"""BC-ADL: budget-constrained alternating direction rank learning (METHOD.md sections 3-4).

Usable inside any training loop::

    admm = BCADL(model, "2.52x", BCADLConfig(period=len(loader)), input_shape=(1, 1, 28, 28))
    for x, y in loader:
        loss = criterion(model(x), y) + admm.penalty()
        loss.backward(); optimizer.step(); optimizer.zero_grad()
        admm.step()                      # every `period` steps: Z-step, U-step, rho growth
    plan = admm.plan()                   # ranks = what the last Z-step kept, filled to the budget

Per eligible layer ``l`` and channel-mode unfolding ``n`` (two for a kxk conv, one for a 1x1 conv
or Linear) it keeps a split variable ``Z[l][n]`` and a scaled dual ``U[l][n]`` of the unfolding's
shape, on the weight's device. The W-step is the caller's optimizer step on
``loss + (rho/2) * sum ||W_l(n) - Z + U||_F^2``. The Z-step soft-thresholds the SVD of ``W + U`` at
``t = lam * alpha_n / rho`` with ranks from :func:`batude.rank.greedy.budgeted_ranks`, so every Z
meets the budget. The U-step adds ``W - Z``. When rho grows by ``g`` the scaled duals are divided by
``g`` (the unscaled multiplier ``rho * U`` is unchanged; Boyd et al. 2011, section 3.4.1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from batude.errors import BatudeError, Diverged
from batude.functional.cost import LayerKind
from batude.functional.tucker import fold, svt, unfold
from batude.rank.budget import Budget
from batude.rank.filter import LayerFilter
from batude.rank.greedy import HOLD, Gains, Score, budgeted_ranks, enforce_limits, fill_to_budget
from batude.rank.latency import LatencyModel
from batude.rank.plan import RankPlan
from batude.rank.problem import RankProblem, SelectorConfig

__all__ = ["BCADLConfig", "BCADL"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BCADLConfig:
    """BC-ADL options. Defaults follow METHOD.md's starting points; see BENCHMARKS.md for tuning.

    rho0, rho_growth, rho_max: penalty weight, its factor per Z-step and its cap.
    lam: nuclear-norm weight lambda; alpha: (alpha_1, alpha_2) for the output/input unfoldings of a
    kxk conv (1x1 convs and Linears use alpha=1). period: optimizer steps between Z/U updates.
    min_rank, multiple_of, layer_filter: as for the training-free selectors. score: the greedy rule's
    removal score. hold: when that rule holds layers dense (:func:`batude.rank.greedy.budgeted_ranks`).
    """

    rho0: float = 1e-3
    rho_growth: float = 1.5
    rho_max: float = 1.0
    lam: float = 1e-4
    alpha: tuple[float, float] = (0.5, 0.5)
    period: int = 100
    min_rank: int = 1
    multiple_of: int | None = None
    layer_filter: LayerFilter | None = None
    score: Score = Score.JOINT_PER_COST
    hold: str = "auto"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "score", Score(self.score))
        except ValueError:
            raise BatudeError(f"BC-ADL config: unknown score '{self.score}'; choose from {[s.value for s in Score]}") from None
        object.__setattr__(self, "alpha", tuple(float(a) for a in self.alpha))
        checks = [
            (self.rho0 > 0, f"rho0 must be > 0, got {self.rho0}"),
            (self.rho_growth >= 1, f"rho_growth must be >= 1, got {self.rho_growth}"),
            (self.rho_max >= self.rho0, f"rho_max ({self.rho_max}) must be >= rho0 ({self.rho0})"),
            (self.lam >= 0, f"lam must be >= 0, got {self.lam}"),
            (len(self.alpha) == 2 and min(self.alpha) >= 0, f"alpha must be two non-negative weights, got {self.alpha}"),
            (int(self.period) >= 1, f"period must be >= 1 step, got {self.period}"),
            (self.hold in HOLD, f"hold must be one of {', '.join(HOLD)}, got {self.hold!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise BatudeError(f"BC-ADL config: {message}")
        SelectorConfig(self.min_rank, self.multiple_of, self.layer_filter)  # validates those

    def selector(self) -> SelectorConfig:
        return SelectorConfig(self.min_rank, self.multiple_of, self.layer_filter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rho0": self.rho0, "rho_growth": self.rho_growth, "rho_max": self.rho_max, "lam": self.lam,
            "alpha": list(self.alpha), "period": self.period, "min_rank": self.min_rank,
            "multiple_of": self.multiple_of, "score": self.score.value, "hold": self.hold,
            "layer_filter": (self.layer_filter or LayerFilter()).to_dict(),
        }


@dataclass
class _Split:
    """Z (split variable) and U (scaled dual) of one unfolding, plus its last spectrum."""

    z: torch.Tensor
    u: torch.Tensor
    alpha: float
    sigma: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))


class BCADL:
    """Budget-constrained ADMM rank learning on ``model``'s eligible layers (see module docs)."""

    def __init__(self, model: nn.Module, budget: Budget | str, config: BCADLConfig | None = None,
                 input_shape: Sequence[int] = (1, 3, 224, 224), latency: LatencyModel | None = None,
                 also: Sequence[Budget | str] = ()) -> None:
        self.config = config or BCADLConfig()
        self.budget = Budget.parse(budget) if isinstance(budget, str) else budget
        self.also = [Budget.parse(b) if isinstance(b, str) else b for b in also]
        self.problem = RankProblem.from_model(model, input_shape, self.budget.metric, self.config.selector(), latency,
                                              [b.metric for b in self.also])
        limits = self.problem.limits(self.budget, self.also)  # fails before any training
        self.limit, self.extra_limits = limits[0].value, limits[1:]
        self.rho = self.config.rho0
        self.steps = 0
        self.updates = 0
        self.history: list[dict[str, Any]] = []
        self.splits: list[list[_Split]] = []
        for cand in self.problem.candidates:
            w = cand.module.weight.detach()
            alphas = self.config.alpha if cand.layer.kind is LayerKind.TUCKER2 else (1.0,)
            self.splits.append([
                _Split(unfold(w, n).clone(), torch.zeros_like(unfold(w, n)), a)
                for n, a in enumerate(alphas)
            ])
        self.ranks: list[tuple[int, ...] | None] = []  # None: held dense
        self._penalty_targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._z_step()  # start from a budget-feasible Z; U stays 0

    def _weights(self) -> list[torch.Tensor]:
        return [c.module.weight for c in self.problem.candidates]

    def penalty(self) -> torch.Tensor:
        """``(rho/2) * sum ||W_l(n) - Z + U||_F^2``, differentiable in the weights (a scalar).

        Computed as ``(rho/2) * sum_l (k_l ||W_l - T_l||^2 + c_l)`` with ``T_l`` the mean over the
        layer's ``k_l`` unfoldings of ``fold(Z - U)`` and ``c_l = sum_n ||fold(Z - U) - T_l||^2``:
        the same value and gradient (an unfolding only reorders entries), but the targets are built
        once per Z/U update and a step costs a handful of operators instead of several per unfolding,
        which is what a launch-bound GPU step pays for (BENCHMARKS.md, "BC-ADL penalty ops").
        """
        target, scale, const = self._targets()
        diff = torch.cat([w.reshape(-1) for w in self._weights()]) - target
        return 0.5 * self.rho * ((diff.square() * scale).sum() + const)

    @torch.no_grad()
    def _targets(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(flat mean targets, flat unfolding counts, constant), cached until Z or U change."""
        if self._penalty_targets is None:
            means, scales, const = [], [], []
            for w, splits in zip(self._weights(), self.splits):
                folded = torch.stack([fold(sp.z - sp.u, n, w.shape) for n, sp in enumerate(splits)])
                mean = folded.mean(0)
                means.append(mean.reshape(-1))
                scales.append(torch.full((mean.numel(),), float(len(splits)), dtype=mean.dtype, device=mean.device))
                const.append((folded - mean).square().sum())
            self._penalty_targets = (torch.cat(means), torch.cat(scales), torch.stack(const).sum())
        return self._penalty_targets

    def step(self) -> bool:
        """Count one optimizer step; every ``period`` steps run Z-, U-step and grow rho. True if updated."""
        self.steps += 1
        if self.steps % self.config.period:
            return False
        self.update()
        return True

    def thresholds(self) -> list[list[float]]:
        return [[self.config.lam * sp.alpha / self.rho for sp in splits] for splits in self.splits]

    @torch.no_grad()
    def _z_step(self) -> None:
        weights = self._weights()
        if not bool(torch.stack([torch.isfinite(w).all() for w in weights]).all()):  # the SVDs would fail on them
            if self.steps == 0:
                raise BatudeError("the model's weights are not all finite before BC-ADL starts; check the checkpoint")
            raise Diverged(f"training diverged: the weights are not finite at BC-ADL update {self.updates + 1}")
        factors = []
        for cand, w, splits in zip(self.problem.candidates, weights, self.splits):
            per = []
            for n, sp in enumerate(splits):
                m = unfold(w.detach(), n) + sp.u
                p, s, qh = torch.linalg.svd(m.float(), full_matrices=False)
                sp.sigma = s.detach().to("cpu", torch.float64)
                per.append((p, s, qh))
            factors.append(per)
        thresholds = self.thresholds()
        self.last_thresholds = thresholds  # the spectra below were thresholded at these
        spectra = [[sp.sigma for sp in splits] for splits in self.splits]
        self.ranks = budgeted_ranks(self.problem, spectra, thresholds, self.limit, self.config.score, self.extra_limits,
                                     self.config.hold)
        for cand, splits, per, ranks, thr in zip(self.problem.candidates, self.splits, factors, self.ranks, thresholds):
            for sp, (p, s, qh), r, t in zip(splits, per, ranks or cand.full_ranks, thr):  # held dense: thresholded only
                sp.z = svt(p, s, qh, r, t).to(sp.z.dtype)
        self._penalty_targets = None

    @torch.no_grad()
    def update(self) -> None:
        """Z-step, U-step, then rho growth (duals rescaled)."""
        self._z_step()
        gap = 0.0
        for cand, w, splits in zip(self.problem.candidates, self._weights(), self.splits):
            for n, sp in enumerate(splits):
                residual = unfold(w.detach(), n) - sp.z
                sp.u += residual
                gap += float(residual.square().sum())
        new_rho = min(self.rho * self.config.rho_growth, self.config.rho_max)
        for splits in self.splits:
            for sp in splits:
                sp.u *= self.rho / new_rho
        self._penalty_targets = None
        self.updates += 1
        record = {"step": self.steps, "rho": self.rho, "primal_residual": gap ** 0.5, "budget_used": self.cost() / self.limit}
        self.rho = new_rho
        self.history.append(record)
        log.info("BC-ADL update %d: rho=%.3g residual=%.4g", self.updates, record["rho"], record["primal_residual"])

    def cost(self) -> float:
        """Whole-model cost of the current Z ranks, in the budget's metric, as a plan of them would
        cost before slack is filled: layers held dense (``None``) or whose chains are no cheaper
        count dense (before 2026-11-27 the history's ``budget_used`` counted every chain)."""
        return self.problem.total(self.ranks)

    def plan(self, method: str = "batude") -> RankPlan:
        """The learned plan: the last Z-step's ranks, then slack filled by the best value per cost."""
        thresholds = self.last_thresholds
        spectra = [[sp.sigma for sp in splits] for splits in self.splits]
        gains = Gains(spectra, thresholds)

        def gain_per_cost(i: int, mode: int, cur: int, nxt: int, ranks: tuple[int, ...]) -> float:
            tie = 1e-12 * float(spectra[i][mode][cur:nxt].sum())  # zero-gain steps: larger sigma first
            value = gains.step(i, ranks, mode, cur, nxt, self.config.score) + tie
            trial = ranks[:mode] + (nxt,) + ranks[mode + 1:]
            added = self.problem.layer_cost(i, trial) - self.problem.layer_cost(i, ranks)
            if not self.config.score.per_cost:
                return value
            return value / added if added > 0 else float("inf")

        limits = [self.problem.limit_of(self.budget), *self.extra_limits]
        ranks = self.ranks
        if not self.problem.fits(ranks, limits):  # only where keep-dense adds cost in another metric
            ranks = enforce_limits(self.problem, spectra, thresholds, ranks, limits, self.config.score)
        ranks = fill_to_budget(self.problem, ranks, self.limit, gain_per_cost, self.extra_limits)
        options = {"bcadl": self.config.to_dict(), "steps": self.steps, "updates": self.updates, "final_rho": self.rho}
        if self.also:
            options["also"] = [str(b) for b in self.also]
        return self.problem.to_plan(ranks, method, self.budget, options)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (tensors and plain values; safe for weights_only loading)."""
        return {
            "rho": self.rho, "steps": self.steps, "updates": self.updates, "history": list(self.history),
            "ranks": [None if r is None else list(r) for r in self.ranks],
            "z": [[sp.z.cpu() for sp in s] for s in self.splits],
            "u": [[sp.u.cpu() for sp in s] for s in self.splits],
            "sigma": [[sp.sigma for sp in s] for s in self.splits],
            "thresholds": self.last_thresholds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shapes = [[tuple(z.shape) for z in zs] for zs in state["z"]]
        if shapes != [[tuple(sp.z.shape) for sp in splits] for splits in self.splits]:
            raise BatudeError("BC-ADL state does not match this model's eligible layers; resume with the same model and filter")
        self.last_thresholds = [list(map(float, t)) for t in state["thresholds"]]
        self.rho, self.steps, self.updates = float(state["rho"]), int(state["steps"]), int(state["updates"])
        self.history = list(state["history"])
        self.ranks = [None if r is None else tuple(r) for r in state["ranks"]]
        for splits, zs, us, ss in zip(self.splits, state["z"], state["u"], state["sigma"]):
            for sp, z, u, s in zip(splits, zs, us, ss):
                sp.z, sp.u, sp.sigma = z.to(sp.z), u.to(sp.u), s
        self._penalty_targets = None
