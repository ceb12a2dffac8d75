"""Budgets, rank plans and rank selectors."""

from batude.rank.budget import Budget, BudgetKind, Metric
from batude.rank.filter import LayerFilter
from batude.rank.plan import LayerPlan, RankPlan, apply_plan_
from batude.rank.problem import RankProblem, SelectorConfig
from batude.rank.selectors import Method, select_ranks

__all__ = [
    "Budget", "BudgetKind", "Metric", "LayerFilter", "LayerPlan", "RankPlan", "apply_plan_", "RankProblem",
    "SelectorConfig", "Method", "select_ranks",
]
