import copy

import pytest
import torch
import torch.nn.functional as F

from batude.errors import BatudeError, Diverged
from batude.models import resnet20
from batude.rank.bcadl import BCADL, BCADLConfig
from batude.rank.budget import Budget
from batude.rank.plan import apply_plan_
from batude.rank.selectors import select_ranks

SHAPE = (1, 1, 28, 28)


def _model(seed=0):
    torch.manual_seed(seed)
    return resnet20(in_channels=1)


def _train(model, admm, steps, seed=0, penalty_only=False):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        x, y = torch.randn(8, *SHAPE[1:], generator=g), torch.randint(0, 10, (8,), generator=g)
        loss = admm.penalty() if penalty_only else F.cross_entropy(model(x), y) + admm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        admm.step()


def test_every_z_step_meets_budget_and_plan_within_one_percent():
    model = _model()
    admm = BCADL(model, "2.52x", BCADLConfig(period=3), input_shape=SHAPE)
    _train(model, admm, 12)
    assert admm.updates == 4
    assert all(h["budget_used"] <= 1.0 for h in admm.history)
    plan = admm.plan()
    limit = Budget.parse("2.52x").limit(plan.dense_macs)
    assert 0.99 * limit <= plan.macs <= limit
    assert plan.method == "batude" and plan.options["bcadl"]["period"] == 3


def test_params_budget():
    model = _model()
    admm = BCADL(model, "params:3x", BCADLConfig(period=2), input_shape=SHAPE)
    _train(model, admm, 4)
    plan = admm.plan()
    assert plan.params <= plan.dense_params / 3


def test_penalty_value_and_gradient():
    model = _model()
    admm = BCADL(model, "2x", BCADLConfig(rho0=0.3, rho_max=1.0), input_shape=SHAPE)
    cand, splits = admm.problem.candidates[0], admm.splits[0]
    with torch.no_grad():
        for sp in splits:
            sp.u.normal_()
    model.zero_grad()
    penalty = admm.penalty()
    penalty.backward()
    w = cand.module.weight.detach()
    w1 = w.reshape(w.shape[0], -1)
    w2 = w.transpose(0, 1).reshape(w.shape[1], -1)
    d1, d2 = w1 - splits[0].z + splits[0].u, w2 - splits[1].z + splits[1].u
    expected_grad = 0.3 * (d1.reshape(w.shape) + d2.reshape(w.shape[1], w.shape[0], *w.shape[2:]).transpose(0, 1))
    assert torch.allclose(cand.module.weight.grad, expected_grad, atol=1e-5)
    others = sum(float((_unf - sp.z + sp.u).square().sum()) for c, ss in zip(admm.problem.candidates[1:], admm.splits[1:])
                 for _unf, sp in zip(_unfoldings(c), ss))
    assert float(penalty.detach()) == pytest.approx(0.15 * (float(d1.square().sum()) + float(d2.square().sum()) + others), rel=1e-5)


def _penalty_by_definition(admm):
    return 0.5 * admm.rho * sum(float((unf - sp.z + sp.u).square().sum()) for c, ss in zip(admm.problem.candidates, admm.splits)
                                for unf, sp in zip(_unfoldings(c), ss))


def test_penalty_follows_every_z_u_update_and_a_resume():
    """The penalty's targets are cached between updates: they must be rebuilt whenever Z, U or rho change."""
    model = _model()
    admm = BCADL(model, "2.52x", BCADLConfig(period=2, rho0=0.05, rho_growth=2.0), input_shape=SHAPE)
    for _ in range(3):
        _train(model, admm, 2)  # one update each time, then the weights move on
        assert float(admm.penalty().detach()) == pytest.approx(_penalty_by_definition(admm), rel=1e-5)
    other = BCADL(copy.deepcopy(model), "2.52x", BCADLConfig(period=2), input_shape=SHAPE)
    other.penalty()  # builds its cache from its own fresh Z/U
    other.load_state_dict(admm.state_dict())
    assert float(other.penalty().detach()) == pytest.approx(_penalty_by_definition(admm), rel=1e-5)


def _unfoldings(cand):
    w = cand.module.weight.detach()
    if cand.layer.kind.value == "tucker2":
        return [w.reshape(w.shape[0], -1), w.transpose(0, 1).reshape(w.shape[1], -1)]
    return [w.reshape(w.shape[0], -1)]


def test_rho_growth_rescales_duals():
    model = _model()
    admm = BCADL(model, "2x", BCADLConfig(rho0=0.01, rho_growth=2.0, rho_max=0.03, period=1), input_shape=SHAPE)
    admm.step()
    assert admm.rho == pytest.approx(0.02)
    sp = admm.splits[0][0]
    w = admm.problem.candidates[0].module.weight.detach()
    # right after the update, rho_new * U_new == rho_old * (W - Z): the unscaled dual is preserved
    assert torch.allclose(0.02 * sp.u, 0.01 * (w.reshape(w.shape[0], -1) - sp.z), atol=1e-7)
    admm.step()
    admm.step()
    assert admm.rho == pytest.approx(0.03)  # capped


def test_low_rank_weights_are_a_fixed_point():
    # Weights that already have Tucker ranks meeting the budget: the Z-step (lam = 0) returns
    # them unchanged, so the residual is ~0 and the dual stays ~0.
    model = _model()
    plan = select_ranks(model, "3x", "uniform", input_shape=SHAPE)
    low = apply_plan_(copy.deepcopy(model), plan)
    with torch.no_grad():
        for layer in plan.layers:
            if layer.ranks:
                module = low.get_submodule(layer.name)
                model.get_submodule(layer.name).weight.copy_(module.dense_weight())
    admm = BCADL(model, "2.9x", BCADLConfig(lam=0.0, period=1), input_shape=SHAPE)
    admm.step()
    assert admm.history[-1]["primal_residual"] < 1e-4 * sum(float(c.module.weight.detach().norm()) for c in admm.problem.candidates)


def test_penalty_step_moves_weights_towards_z():
    model = _model()
    admm = BCADL(model, "4x", BCADLConfig(rho0=1.0, rho_max=1.0, lam=0.0), input_shape=SHAPE)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = float(admm.penalty().detach())
    for _ in range(3):
        loss = admm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(admm.penalty().detach()) < 0.5 * before


def _run(cfg, interrupt: bool):
    """4 steps on stream 0, then 4 on stream 123; optionally through a state_dict round trip."""
    model = _model()
    admm = BCADL(model, "3x", cfg, input_shape=SHAPE)
    _train(model, admm, 4, seed=0)
    if interrupt:
        state, weights = copy.deepcopy(admm.state_dict()), copy.deepcopy(model.state_dict())
        model = _model(seed=1)
        model.load_state_dict(weights)
        admm = BCADL(model, "3x", cfg, input_shape=SHAPE)
        admm.load_state_dict(state)
        assert admm.steps == 4
    _train(model, admm, 4, seed=123)
    return model, admm


def test_deterministic_and_resumable():
    cfg = BCADLConfig(period=2)
    m1, a1 = _run(cfg, interrupt=False)
    m2, a2 = _run(cfg, interrupt=False)
    m3, a3 = _run(cfg, interrupt=True)
    assert a1.plan().to_dict() == a2.plan().to_dict() == a3.plan().to_dict()
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m3.state_dict()[k]), k


def test_infeasible_budget_fails_before_training():
    with pytest.raises(BatudeError, match="infeasible"):
        BCADL(_model(), "1000x", input_shape=SHAPE)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"rho0": 0}, "rho0"), ({"rho_growth": 0.5}, "rho_growth"), ({"period": 0}, "period"),
     ({"lam": -1}, "lam"), ({"alpha": (1.0,)}, "alpha"), ({"multiple_of": 0}, "multiple_of"),
     ({"hold": "sometimes"}, "hold must be one of auto, to-fit, never")],
    ids=["rho0", "growth", "period", "lam", "alpha", "multiple", "hold"],
)
def test_config_validation(kwargs, match):
    with pytest.raises(BatudeError, match=match):
        BCADLConfig(**kwargs)


def test_hold_setting_is_recorded_and_records_from_before_it_read_as_never():
    from batude.train import CompressConfig

    record = CompressConfig(bcadl=BCADLConfig(hold="to-fit")).to_dict()
    assert CompressConfig.from_dict(record).bcadl.hold == "to-fit"
    del record["bcadl"]["hold"]  # saved before the option: those runs' rule held nothing dense
    assert CompressConfig.from_dict(record).bcadl.hold == "never"


def test_multiple_of_respected():
    model = _model()
    admm = BCADL(model, "2x", BCADLConfig(period=2, multiple_of=8), input_shape=SHAPE)
    _train(model, admm, 2)
    for layer in admm.plan().layers:
        if layer.ranks:
            full = (layer.geometry.out_channels, layer.geometry.in_channels) if layer.kind.value == "tucker2" else (
                min(layer.geometry.out_channels, layer.geometry.in_channels),)
            assert all(r % 8 == 0 or r == f for r, f in zip(layer.ranks, full))


def test_coarse_rank_grid_is_feasible_when_selectors_are():
    # with multiple_of=32 the 16-channel stage cannot be factorised usefully; it stays dense
    model = _model()
    admm = BCADL(model, "1.2x", BCADLConfig(multiple_of=32, period=1), input_shape=SHAPE)
    assert admm.cost() <= admm.limit
    assert all(not c.name.startswith("layer1.") for c in admm.problem.candidates)


def test_update_on_non_finite_weights_is_a_divergence_not_an_svd_failure():
    model = _model()
    admm = BCADL(model, "2x", BCADLConfig(period=1), input_shape=SHAPE)
    with torch.no_grad():
        admm.problem.candidates[3].module.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(Diverged, match="weights are not finite at BC-ADL update 1"):
        admm.step()


def test_non_finite_weights_before_training_are_a_checkpoint_error():
    model = _model()
    with torch.no_grad():
        model.layer2[0].conv2.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(BatudeError, match="not all finite before BC-ADL starts; check the checkpoint"):
        BCADL(model, "2x", input_shape=SHAPE)
