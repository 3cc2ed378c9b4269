"""--recipe: the demo and the authors' schedules (eas_method.md §3-4), explicit flags overriding them."""
import pytest

from eas.errors import UsageError
from eas.tune.config import TuneConfig, validate, with_defaults
from eas.tune.recipes import describe


def test_demo_is_the_cpu_schedule_and_says_how_the_paper_differs():
    cfg = with_defaults(TuneConfig(), "lavin", 256)
    assert (cfg.lr, cfg.batch_size, cfg.warmup_epochs, cfg.search_epochs, cfg.finetune_epochs, cfg.nas_every,
            cfg.lr_warmup_epochs) == (4e-3, 16, 3.0, 3.0, 20.0, 2, 1.0)
    text = describe(cfg.recipe, cfg.arch, vars(cfg))
    assert "NOT the paper's" in text and "lr=0.001125" in text and "batch_size=32" in text
    assert "overridden" not in text


def test_paper_recipe_lavin_and_llava_with_explicit_flags_overriding():
    cfg = with_defaults(TuneConfig(recipe="paper"), "lavin", 256)
    # LaVIN-EAS: blr 9e-3 x 32/256, batch 4 x accum 4 x 2 GPUs, 2-epoch LR warm-up, 5 + 5 search
    # epochs, a bandit round every 10 steps, M = 3, bandit lr 2, 20 fine-tune epochs
    assert (cfg.lr, cfg.batch_size, cfg.lr_warmup_epochs, cfg.warmup_epochs, cfg.search_epochs, cfg.nas_every,
            cfg.candidates, cfg.search_lr, cfg.finetune_epochs, cfg.weight_decay) == \
        (9e-3 * 32 / 256, 32, 2.0, 5.0, 5.0, 10, 3, 2.0, 20.0, 0.02)
    assert (cfg.adapter_dim, cfg.skip_dim) == (8, 32)
    llava = with_defaults(TuneConfig(recipe="paper", finetune_epochs=1.0), "llava", 4096)
    assert (llava.lr, llava.batch_size, llava.weight_decay, llava.candidates, llava.search_lr) == \
        (4e-4, 128, 0.0, 5, 1.0)
    assert llava.warmup_epochs + llava.search_epochs == 20.0 and llava.finetune_epochs == 1.0
    text = describe(llava.recipe, llava.arch, vars(llava))
    assert "LLAVA-EAS" in text and "overridden" not in text
    assert llava.search == "llava" and llava.beta == 1.0  # LLaVA-EAS's own bandit under its recipe


def test_precedence_flags_then_arch_then_recipe_then_search():
    narrow = with_defaults(TuneConfig(search="llava"), "llava", 256)
    assert (narrow.adapter_dim, narrow.finetune_epochs) == (8, 10.0)  # arch_defaults of a narrow LLaVA
    assert (narrow.lr, narrow.nas_every, narrow.candidates, narrow.beta) == (4e-3, 3, 5, 1.0)  # demo + llava bandit
    flagged = with_defaults(TuneConfig(recipe="paper", nas_every=4, search="lavin"), "llava", 4096)
    assert (flagged.nas_every, flagged.candidates, flagged.beta, flagged.search) == (4, 5, 10.0, "lavin")


def test_bad_recipe_or_bad_value_is_refused_before_and_after_resolution():
    with pytest.raises(UsageError, match="--recipe 'fast'"):
        validate(TuneConfig(recipe="fast"))
    with pytest.raises(UsageError, match="--lr -1.0"):
        validate(TuneConfig(recipe="paper", lr=-1.0))
    validate(TuneConfig(recipe="paper"))  # unset schedule fields wait for the architecture
