"""The flat public API: `__all__` is sorted, complete, and every name resolves."""

import router


def test_all_is_sorted_and_resolves():
    names = [n for n in router.__all__ if n != "__version__"]
    assert names == sorted(names)
    for name in router.__all__:
        assert getattr(router, name) is not None, name
