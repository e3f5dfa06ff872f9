"""MMEngine's runner, taking a model built before it as its own.

The tools build the config's model before the run starts, to check the
config and every checkpoint against it; :class:`PrebuiltModelRunner` takes
that model instead of building it again. The model was built right after
the random generators were seeded as the runner seeds them, so handing it
over and restoring the states its build left makes the run the one MMEngine
would have started, bit for bit, one build sooner.
"""
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Tuple

from mmengine.runner import Runner

from ...utils.random_state import restore_random_state


class PrebuiltModelRunner(Runner):
    """:class:`~mmengine.runner.Runner` whose ``build_model`` returns the
    model given by :func:`model_built`, with the random states that model's
    build left."""

    #: The model and random states :func:`model_built` hands over.
    _pending: Optional[Tuple[Any, dict]] = None

    def build_model(self, model: Any) -> Any:
        pending = PrebuiltModelRunner._pending
        if pending is None or not isinstance(model, dict):
            return super().build_model(model)
        PrebuiltModelRunner._pending = None
        built, state = pending
        restore_random_state(state)
        return built


@contextmanager
def model_built(model: Any, random_state: dict) -> Iterator[None]:
    """Within: the next :class:`PrebuiltModelRunner` takes ``model`` (built
    from the config right after seeding as the runner seeds) and restores
    ``random_state`` (the states right after that build)."""
    PrebuiltModelRunner._pending = (model, random_state)
    try:
        yield
    finally:
        PrebuiltModelRunner._pending = None
