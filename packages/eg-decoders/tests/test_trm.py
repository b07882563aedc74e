"""TRM's recursion is real: z matters, cycles matter, gradients cross only the last cycle, deep supervision
gives one loss per step, and the halting head decides how many steps generation runs."""

import pytest
import torch
from eg_decoders import TRMConfig, TRMDecoder, answer_loss
from eg_decoders.prefix import take_text


def make(**overrides):
    torch.manual_seed(0)
    values = {"hidden_size": 32, "num_heads": 2, "prefix_dim": 8, "max_seq_len": 32, "n_latent_steps": 3}
    return TRMDecoder(TRMConfig(**{**values, "n_cycles": 2, **overrides})).eval()


def inputs(model):
    batch = model.encode_qa(["ab", "abc"], ["x", "yz"])
    return torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(5)), batch


def test_latent_z_changes_the_logits():
    model = make()
    prefix, batch = inputs(model)
    before = model(prefix, **batch).logits
    model.z_init.add_(torch.randn_like(model.z_init))
    after = model(prefix, **batch).logits
    assert not torch.allclose(before, after, atol=1e-3)


def test_more_cycles_change_the_logits():
    model = make()
    prefix, batch = inputs(model)
    three = model.forward_with_cycles(prefix, batch["input_ids"], batch["attention_mask"], n_cycles=3).logits
    four = model.forward_with_cycles(prefix, batch["input_ids"], batch["attention_mask"], n_cycles=4).logits
    assert not torch.allclose(three, four, atol=1e-3)
    default = model(prefix, batch["input_ids"], batch["attention_mask"]).logits
    two = model.forward_with_cycles(prefix, batch["input_ids"], batch["attention_mask"], n_cycles=2).logits
    assert torch.equal(default, two)  # config n_cycles=2


def test_network_calls_with_and_without_grad():
    n, cycles, steps = 3, 3, 2
    model = make(n_latent_steps=n, n_cycles=cycles, num_supervision_steps=steps).train()
    calls = {True: 0, False: 0}

    def count(*_):
        calls[torch.is_grad_enabled()] += 1

    model.blocks[0].register_forward_hook(count)
    prefix, batch = inputs(model)
    model(prefix, **batch).loss.backward()
    # each step: T cycles of (n z-updates + 1 y-update); only the last cycle is recorded for backward
    assert calls[True] == steps * (n + 1)
    assert calls[False] == steps * (cycles - 1) * (n + 1)


@pytest.mark.parametrize("cycles,reaches_start", [(1, True), (2, False)])
def test_gradient_reaches_the_starting_state_only_without_earlier_cycles(cycles, reaches_start):
    model = make()
    prefix, batch = inputs(model)
    x, mask, _ = model._embed(model.project_prefix(prefix), batch["input_ids"], batch["attention_mask"], None)
    y0, z0 = (t.clone().requires_grad_(True) for t in model.initial_state(x))
    y, _ = model.recurse(x, y0, z0, mask, n_cycles=cycles)
    grads = torch.autograd.grad(model.lm_head(y).sum(), [y0, z0, x], allow_unused=True)
    assert (grads[0] is not None and grads[1] is not None) == reaches_start
    assert grads[2] is not None and grads[2].abs().sum() > 0  # the input always gets a gradient


def test_deep_supervision_gives_a_loss_per_step_with_detached_state():
    model = make(num_supervision_steps=3).train()
    prefix, batch = inputs(model)
    out = model(prefix, **batch)
    assert len(out.step_losses) == 3
    assert torch.allclose(out.loss, torch.stack(out.step_losses).mean())
    assert len({round(s.item(), 6) for s in out.step_losses}) == 3  # each step refines the previous answer
    # the last step's loss reaches the weights only through its own recursion: its gradient equals the
    # gradient of a single step started from the detached state the first two steps left behind
    params = [p for p in model.parameters() if p.requires_grad]
    full = torch.autograd.grad(out.step_losses[-1], params, allow_unused=True)
    x, mask, text_index = model._embed(
        model.project_prefix(prefix), batch["input_ids"], batch["attention_mask"], None
    )
    with torch.no_grad():
        y, z = model.initial_state(x)
        for _ in range(2):
            y, z = model.recurse(x, y, z, mask)
    y, z = model.recurse(x, y, z, mask)
    logits = model.lm_head(take_text(y, text_index))
    single = answer_loss(logits, batch["labels"]) + model.config.halt_loss_weight * model._halt_loss(
        take_text(y, text_index), logits, batch["labels"]
    )
    assert single.item() == pytest.approx(out.step_losses[-1].item(), rel=1e-5)
    again = torch.autograd.grad(single, params, allow_unused=True)
    for a, b in zip(full, again):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6)


def test_halting_head_stops_refinement_at_inference():
    model = make(num_supervision_steps=3)
    prefix, batch = inputs(model)
    x, mask, _ = model._embed(model.project_prefix(prefix), batch["input_ids"], batch["attention_mask"], None)
    y, z = model.initial_state(x)
    first_y, _ = model.recurse(x, y, z, mask)
    one_step = model.lm_head(first_y[:, -1])
    all_steps = model._last_logits(x, mask)  # untrained head: bias -5, never halts
    assert not torch.allclose(one_step, all_steps, atol=1e-4)
    with torch.no_grad():
        model.halt_head.bias.fill_(10.0)  # certain to halt after the first step
    assert torch.allclose(model._last_logits(x, mask), one_step, atol=1e-6)
    model.config.halt_at_inference = False
    assert torch.allclose(model._last_logits(x, mask), all_steps, atol=1e-6)


def test_halting_head_learns_when_answers_are_right():
    model = make(num_supervision_steps=2, hidden_size=48).train()
    prefix, batch = inputs(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(50):
        out = model(prefix, **batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    x, mask, text_index = model._embed(
        model.project_prefix(prefix), batch["input_ids"], batch["attention_mask"], None
    )
    with torch.no_grad():
        y, z = model.initial_state(x)
        for _ in range(2):
            y, z = model.recurse(x, y, z, mask)
        q = torch.sigmoid(model.halt_head(take_text(y, text_index)).squeeze(-1))[:, :-1]
        right = model.lm_head(take_text(y, text_index))[:, :-1].argmax(-1) == batch["labels"][:, 1:]
    answer = batch["labels"][:, 1:] != -100
    assert bool(right[answer].all())  # overfit: every answer token predicted
    assert bool((q[answer] > 0.5).all())  # and the halting head says so (it started at sigmoid(-5))
