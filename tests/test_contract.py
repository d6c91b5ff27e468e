"""The contract every delta family keeps on every backbone family, walked from the registries.

For each registered delta (its spec's defaults) x each registered family with a tiny backbone: the delta is
applied or `Delta.supports` names why not (skipped with that reason); one training step changes its own
parameters and no backbone parameter; the parameter accounting is exact (and equals the closed form
the spec declares, if any); save -> load on a fresh backbone gives
equal saved tensors and equal logits; the traits its spec declares hold (mergeable: merged logits equal). A new
delta or family is tested here without anyone writing a list.
"""

from __future__ import annotations

import pytest
import torch
from methods_tiny import FAMILIES, batch, logits, method, snapshot, tiny

from peftrun.backbones.families import get_family
from peftrun.methods import DELTAS, apply_method, load_method
from peftrun.methods.spec import registered_specs

CASES = [(kind, family) for kind in sorted(DELTAS) for family in FAMILIES]


def test_every_delta_has_its_torch_free_spec_registered_under_its_kind():
    assert set(DELTAS) == set(registered_specs())
    for kind, cls in DELTAS.items():
        assert cls.spec_class is registered_specs()[kind] and cls.kind == kind


@pytest.mark.parametrize(("kind", "family"), CASES)
def test_delta_contract(kind, family, tmp_path):
    cls = DELTAS[kind]
    bb = tiny(family)
    reason = cls.supports(cls.spec_class(), bb.anatomy)
    if reason:
        pytest.skip(f"{kind} on {family}: {reason}")
    before = snapshot(bb.model)
    applied = apply_method(bb.model, bb.anatomy, method({"kind": kind}), tokenizer=bb.tokenizer)
    (delta,) = applied.deltas.values()
    own = dict(delta.named_parameters())

    # exact counts: trainable = the delta's own tensors; per role sums to it; the backbone is unchanged in size
    report = applied.param_report()
    own_count = sum(p.numel() for p in own.values())
    assert own_count > 0
    assert report["trainable"] == own_count == report["per_delta"][delta_name(applied)]["trainable"]
    assert sum(delta.per_role_counts().values()) == own_count
    assert report["backbone"] == sum(p.numel() for p in before.values())
    assert report["saved"] == sum(t.numel() for t in delta.saved_state_dict().values())
    closed_form = delta.spec.parameter_count(bb.anatomy, get_family(family).shape(bb.model.config))
    assert closed_form is None or closed_form == own_count

    # one step moves the delta's own parameters, and only those
    inputs = batch(bb)
    bb.model.train()
    start = {name: p.detach().clone() for name, p in own.items()}
    optimizer = torch.optim.SGD([p for p in bb.model.parameters() if p.requires_grad], lr=0.1)
    bb.model(**inputs).loss.backward()
    optimizer.step()
    bb.model.eval()
    assert any(not torch.equal(start[name], p) for name, p in own.items()), "the step moved no delta parameter"
    after = {name: p for name, p in bb.model.named_parameters() if not name.startswith("peftrun_deltas.")}
    assert after.keys() == before.keys()
    moved = [name for name, p in after.items() if not torch.equal(before[name], p)]
    assert not moved, f"backbone parameters changed: {moved[:3]}"

    # save -> load on a fresh backbone: equal saved tensors and outputs
    expected = logits(bb.model, inputs)
    applied.save(tmp_path)
    fresh = tiny(family)
    reloaded = load_method(fresh.model, fresh.anatomy, tmp_path, tokenizer=fresh.tokenizer)
    (again,) = reloaded.deltas.values()
    saved, restored = delta.saved_state_dict(), again.saved_state_dict()
    assert saved.keys() == restored.keys() and all(torch.equal(saved[k], restored[k]) for k in saved)
    torch.testing.assert_close(logits(fresh.model, inputs), expected, atol=1e-6, rtol=0)

    # declared traits
    assert delta.mergeable == cls.spec_class.mergeable
    if cls.spec_class.mergeable:
        reloaded.merge()
        torch.testing.assert_close(logits(fresh.model, inputs), expected, atol=1e-5, rtol=0)


def delta_name(applied) -> str:
    (name,) = applied.deltas.keys()
    return name
