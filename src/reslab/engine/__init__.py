"""Training and evaluation: recipes, the loop, the run directory, torchrun."""
from .recipe import Recipe, load_recipe


def fit(*args, **kwargs):  # noqa: D103 - see loop.fit; imported lazily (it pulls in the data layer)
    from .loop import fit as _fit

    return _fit(*args, **kwargs)


__all__ = ["Recipe", "fit", "load_recipe"]
